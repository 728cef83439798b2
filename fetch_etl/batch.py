"""From received messages to the masked batch frame: pure, vectorised where it counts, no Dagster.

The frame has one row per message. Valid logins carry masked tokens only; rejected messages carry a
reason and, of their content, only tokens of an `ip`/`device_id` that was a usable string, so the
frame itself never holds a clear IP or device id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from fetch_etl.masking import Masker, mask_device_ids, mask_ips, mask_optional
from fetch_etl.records import LoginEvent, Rejection, maskable_pii, parse_login, sent_date
from fetch_etl.resources.sqs import DeadLetter, QueueMessage
from fetch_etl.warehouse import LOGIN_COLUMNS

STATUS_LOADABLE = "loadable"
STATUS_REJECTED = "rejected"
BATCH_COLUMNS: tuple[str, ...] = (*LOGIN_COLUMNS, "status", "reason_code", "reason", "received_at")


@dataclass(frozen=True)
class MaskStats:
    loadable: int
    rejected: int
    rejected_by_reason: dict[str, int]
    unparsed_ips: int


def poison(receive_count: int, limit: int) -> Rejection:
    """A message that keeps coming back without being loaded: set it aside so it stops blocking."""
    return Rejection(
        "poison", f"received {receive_count} times without being loaded (limit {limit}); set aside for inspection"
    )


def mask_messages(
    messages: Sequence[QueueMessage],
    masker: Masker,
    now: datetime | None = None,
    max_receive_count: int | None = None,
) -> pd.DataFrame:
    """Parse, validate and mask every message into one frame (see BATCH_COLUMNS).

    Messages received more than `max_receive_count` times are rejected as poison without parsing.
    """
    received_at = now or datetime.now(UTC)
    parsed: list[LoginEvent | Rejection] = [
        poison(m.receive_count, max_receive_count)
        if max_receive_count is not None and m.receive_count > max_receive_count
        else parse_login(m.body)
        for m in messages
    ]
    valid = [(m, p) for m, p in zip(messages, parsed, strict=True) if isinstance(p, LoginEvent)]
    rejected = [(m, p) for m, p in zip(messages, parsed, strict=True) if isinstance(p, Rejection)]

    ips = mask_ips(masker, (event.ip for _, event in valid))
    logins = pd.DataFrame(
        {
            "message_id": pd.Series([m.message_id for m, _ in valid], dtype=object),
            "user_id": pd.Series([e.user_id for _, e in valid], dtype=object),
            "device_type": pd.Series([e.device_type for _, e in valid], dtype=object),
            "masked_ip": pd.Series(ips.tokens, dtype=object),
            "masked_device_id": pd.Series(mask_device_ids(masker, (e.device_id for _, e in valid)), dtype=object),
            "locale": pd.Series([e.locale for _, e in valid], dtype=object),
            "app_version": pd.Series([e.app_version for _, e in valid], dtype="Int64"),
            "app_version_raw": pd.Series([e.app_version_raw for _, e in valid], dtype=object),
            "create_date": pd.Series([sent_date(m.sent_timestamp) for m, _ in valid], dtype=object),
            "mask_key_id": pd.Series([masker.key_id] * len(valid), dtype=object),
            "status": pd.Series([STATUS_LOADABLE] * len(valid), dtype=object),
        }
    )
    reject_pii = [maskable_pii(m.body) for m, _ in rejected]
    reject_ips = mask_optional(masker, (ip for ip, _ in reject_pii), "ip")
    reject_devices = mask_optional(masker, (device for _, device in reject_pii), "device_id")
    rejects = pd.DataFrame(
        {
            "message_id": pd.Series([m.message_id for m, _ in rejected], dtype=object),
            "masked_ip": pd.Series(reject_ips, dtype=object),
            "masked_device_id": pd.Series(reject_devices, dtype=object),
            "mask_key_id": pd.Series(
                [masker.key_id if ip or dev else None for ip, dev in zip(reject_ips, reject_devices, strict=True)],
                dtype=object,
            ),
            "status": pd.Series([STATUS_REJECTED] * len(rejected), dtype=object),
            "reason_code": pd.Series([r.code for _, r in rejected], dtype=object),
            "reason": pd.Series([r.reason for _, r in rejected], dtype=object),
        }
    )
    frame = pd.concat([logins, rejects], ignore_index=True) if len(rejects) else logins
    frame = frame.reindex(columns=list(BATCH_COLUMNS)).astype({c: object for c in BATCH_COLUMNS if c != "app_version"})
    frame["received_at"] = received_at
    frame.attrs["unparsed_ips"] = ips.unparsed
    return frame


def loadable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == STATUS_LOADABLE]


def rejected(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == STATUS_REJECTED]


def stats(frame: pd.DataFrame) -> MaskStats:
    bad = rejected(frame)
    return MaskStats(
        loadable=int((frame["status"] == STATUS_LOADABLE).sum()),
        rejected=len(bad),
        rejected_by_reason=dict(Counter(bad["reason_code"].tolist())),
        unparsed_ips=int(frame.attrs.get("unparsed_ips", 0)),
    )


def dead_letters(
    rejects: pd.DataFrame, messages: Mapping[str, QueueMessage], message_ids: Sequence[str]
) -> list[DeadLetter]:
    """The rejected messages to forward, each with its reason."""
    reasons = rejects.set_index("message_id")
    return [DeadLetter(messages[mid], reasons.at[mid, "reason_code"], reasons.at[mid, "reason"]) for mid in message_ids]
