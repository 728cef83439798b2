"""From received messages to the run's masked frame: pure, vectorised where it counts, no Dagster.

The frame has one row per message, keyed by the message's `key` (its original MessageId). A message's
outcome is decided once: one whose key already has a stored outcome is not evaluated again (status
`already_loaded`, `already_dead_lettered` or `awaiting_dead_letter`), unless it is a new redrive.
Evaluated logins carry masked tokens only; rejected messages carry a reason and, of their content, only
tokens of an `ip`/`device_id` that was a usable string, so the frame never holds a clear IP or device id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fetch_etl.logins.masking import Masker, mask_device_ids, mask_ips, mask_optional
from fetch_etl.logins.records import LoginEvent, Rejection, maskable_pii, parse_login, sent_date, sent_time
from fetch_etl.queue.messages import QueueMessage
from fetch_etl.warehouse.load import LOGIN_COLUMNS, StoredOutcome

if TYPE_CHECKING:  # pandas loads where a run's messages are masked, not when Dagster loads the definitions
    import pandas as pd

STATUS_LOADABLE = "loadable"
STATUS_REJECTED = "rejected"
# Decided before this run: acknowledge (and, for a reject without its dead-letter copy, forward) only.
STATUS_ALREADY_LOADED = "already_loaded"
STATUS_ALREADY_DEAD_LETTERED = "already_dead_lettered"
STATUS_AWAITING_DEAD_LETTER = "awaiting_dead_letter"
STORED_STATUSES = (STATUS_ALREADY_LOADED, STATUS_ALREADY_DEAD_LETTERED, STATUS_AWAITING_DEAD_LETTER)
FRAME_COLUMNS: tuple[str, ...] = (
    *LOGIN_COLUMNS,
    "status",
    "reason_code",
    "reason",
    "received_at",
    "sent_at",
    "redriven_at",
)


@dataclass(frozen=True)
class MaskStats:
    loadable: int
    rejected: int
    rejected_by_reason: dict[str, int]
    unparsed_ips: int
    already_stored: int = 0


def redrive_time(message: QueueMessage) -> datetime | None:
    """When `fetch-etl redrive` sent this copy (its `redriven_at` attribute); None for a plain message."""
    if not message.redriven_at:
        return None
    try:
        when = datetime.fromisoformat(message.redriven_at)
    except ValueError:
        return None  # not ours: treat the message as a plain one rather than re-evaluate it on every receipt
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def stored_status(message: QueueMessage, stored: StoredOutcome | None) -> str | None:
    """The status a stored outcome gives `message`, or None when it must be evaluated.

    A stored login always wins. A stored reject decides the message too, unless the message is a redrive
    that has not been evaluated yet (its `redriven_at` is not the one the reject row records).
    """
    if stored is None:
        return None
    if stored.loaded:
        return STATUS_ALREADY_LOADED
    redriven = redrive_time(message)
    if redriven is not None and redriven != stored.redriven_at:
        return None
    return STATUS_ALREADY_DEAD_LETTERED if stored.dead_lettered else STATUS_AWAITING_DEAD_LETTER


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
    stored: Mapping[str, StoredOutcome] | None = None,
    limits_in_bytes: bool = False,
) -> pd.DataFrame:
    """Decide, parse, validate and mask every message into one frame (see FRAME_COLUMNS).

    Messages whose key has a stored outcome (`stored`) get that outcome's status and are not parsed.
    Of the others, those received more than `max_receive_count` times are rejected as poison unparsed.
    `limits_in_bytes`: the warehouse's varchar limits count bytes (see `records.parse_login`).
    """
    import pandas as pd

    received_at = now or datetime.now(UTC)
    stored = stored or {}
    decided = [(m, stored_status(m, stored.get(m.key))) for m in messages]
    fresh = [m for m, status in decided if status is None]
    parsed: list[LoginEvent | Rejection] = [
        poison(m.receive_count, max_receive_count)
        if max_receive_count is not None and m.receive_count > max_receive_count
        else parse_login(m.body, limits_in_bytes=limits_in_bytes)
        for m in fresh
    ]
    valid = [(m, p) for m, p in zip(fresh, parsed, strict=True) if isinstance(p, LoginEvent)]
    rejected = [(m, p) for m, p in zip(fresh, parsed, strict=True) if isinstance(p, Rejection)]

    ips = mask_ips(masker, (event.ip for _, event in valid))
    logins = pd.DataFrame(
        {
            "message_id": pd.Series([m.key for m, _ in valid], dtype=object),
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
            "sent_at": pd.Series([sent_time(m.sent_timestamp) for m, _ in valid], dtype=object),
            "redriven_at": pd.Series([redrive_time(m) for m, _ in valid], dtype=object),
        }
    )
    reject_pii = [maskable_pii(m.body) for m, _ in rejected]
    reject_ips = mask_optional(masker, (ip for ip, _ in reject_pii), "ip")
    reject_devices = mask_optional(masker, (device for _, device in reject_pii), "device_id")
    rejects = pd.DataFrame(
        {
            "message_id": pd.Series([m.key for m, _ in rejected], dtype=object),
            "masked_ip": pd.Series(reject_ips, dtype=object),
            "masked_device_id": pd.Series(reject_devices, dtype=object),
            "mask_key_id": pd.Series(
                [masker.key_id if ip or dev else None for ip, dev in zip(reject_ips, reject_devices, strict=True)],
                dtype=object,
            ),
            "status": pd.Series([STATUS_REJECTED] * len(rejected), dtype=object),
            "reason_code": pd.Series([r.code for _, r in rejected], dtype=object),
            "reason": pd.Series([r.reason for _, r in rejected], dtype=object),
            "sent_at": pd.Series([sent_time(m.sent_timestamp) for m, _ in rejected], dtype=object),
            "redriven_at": pd.Series([redrive_time(m) for m, _ in rejected], dtype=object),
        }
    )
    settled = pd.DataFrame(
        {
            "message_id": pd.Series([m.key for m, status in decided if status is not None], dtype=object),
            "status": pd.Series([status for _, status in decided if status is not None], dtype=object),
        }
    )
    parts = [part for part in (logins, rejects, settled) if len(part)]
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts[0] if parts else logins)
    frame = frame.reindex(columns=list(FRAME_COLUMNS)).astype({c: object for c in FRAME_COLUMNS if c != "app_version"})
    frame["received_at"] = received_at
    frame.attrs["unparsed_ips"] = ips.unparsed
    return frame


def loadable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == STATUS_LOADABLE]


def rejected(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == STATUS_REJECTED]


def keys_with_status(frame: pd.DataFrame, *statuses: str) -> list[str]:
    return frame.loc[frame["status"].isin(statuses), "message_id"].tolist()


def stats(frame: pd.DataFrame) -> MaskStats:
    bad = rejected(frame)
    return MaskStats(
        loadable=int((frame["status"] == STATUS_LOADABLE).sum()),
        rejected=len(bad),
        rejected_by_reason=dict(Counter(bad["reason_code"].tolist())),
        unparsed_ips=int(frame.attrs.get("unparsed_ips", 0)),
        already_stored=int(frame["status"].isin(STORED_STATUSES).sum()),
    )
