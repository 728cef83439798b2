"""From QueueMessages to the masked batch frame, and SQS send batching (pure, no queue, no database)."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetch_etl.logins.frame import (
    FRAME_COLUMNS,
    STATUS_LOADABLE,
    STATUS_REJECTED,
    loadable,
    mask_messages,
    rejected,
    stats,
)
from fetch_etl.logins.masking import HmacMasker
from fetch_etl.queue.messages import MAX_BATCH, MAX_BATCH_BYTES, DeadLetter, QueueMessage, batches_by_size
from fetch_etl.warehouse.load import LOGIN_COLUMNS

KEY = bytes(range(32))
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
TOKEN_RE = re.compile(r"[0-9a-f]{64}")
LOGIN_VALUE_COLUMNS = tuple(c for c in LOGIN_COLUMNS if c != "message_id")

# Clear values that must never reach the frame; each is unique so a hit cannot be a coincidence.
IP_1 = "198.51.100.201"
IP_2 = "2001:db8:0:0:0:0:0:a1"
IP_3 = "ip-marker-not-an-address"
IP_4 = "198.51.100.204"
IP_5 = "198.51.100.205"
IP_6 = "198.51.100.206"
DEV_1 = "dev-marker-one"
DEV_2 = "  dev-marker-two  "
DEV_3 = "dev-marker-three"
DEV_5 = "dev-marker-five"
DEV_6 = "dev-marker-six"
MARKERS = (IP_1, IP_2, "2001:db8::a1", IP_3, IP_4, IP_5, IP_6, DEV_1, DEV_2.strip(), DEV_3, DEV_5, DEV_6)


def login(**changes: Any) -> str:
    data = {
        "user_id": "user-1",
        "device_type": "android",
        "ip": IP_1,
        "device_id": DEV_1,
        "locale": "RU",
        "app_version": "2.3.0",
        **changes,
    }
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def message(mid: str, body: str, sent: str | None = "1700000000000", receive_count: int = 1) -> QueueMessage:
    return QueueMessage(
        message_id=mid,
        receipt_handle=f"handle-{mid}",
        body=body,
        sent_timestamp=sent,
        receive_count=receive_count,
    )


MESSAGES = [
    message("m1", login()),
    message(
        "m2",
        login(user_id="user-2", ip=IP_2, device_id=DEV_2, locale=None, app_version="0.96"),
        sent="1700006399999",
    ),
    message("m3", login(user_id="user-3", ip=IP_3, device_id=DEV_3, locale=..., app_version="3.7")),
    message("m4", f"not json {IP_4}", receive_count=3),
    message("m5", login(ip=IP_5, device_id=...)),
    message("m6", login(ip=IP_6, device_id=DEV_6, app_version="2.3.0-beta")),
    message("m7", login(ip=IP_5 + "\x00", device_id=DEV_5)),
    message("m8", login(ip=IP_1).replace('"ip":', f'"ip": "{IP_4}", "ip":')),
    message("m9", '{"foo": "oops_wrong_msg_type", "bar": "123"}'),
]
EXPECTED_REJECTS = {
    "m4": "invalid_json",
    "m5": "missing_device_id",
    "m6": "invalid_app_version",
    "m7": "invalid_ip",
    "m8": "duplicate_key",
    "m9": "not_a_login",
}


@pytest.fixture
def masker() -> HmacMasker:
    return HmacMasker(KEY)


@pytest.fixture
def frame(masker: HmacMasker) -> pd.DataFrame:
    return mask_messages(MESSAGES, masker, now=NOW)


def all_cells(frame: pd.DataFrame) -> list[str]:
    """Every cell as text: via astype(str) (pandas 3 keeps missing values missing there) and repr."""
    as_str = [str(cell) for cell in frame.astype(str).to_numpy().ravel()]
    return as_str + [repr(cell) for cell in frame.to_numpy().ravel()]


def by_id(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {row["message_id"]: row for row in frame.to_dict("records")}


def test_one_row_per_message_with_the_batch_columns(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == len(MESSAGES)
    assert sorted(frame["message_id"]) == sorted(m.message_id for m in MESSAGES)
    assert set(frame["status"]) == {STATUS_LOADABLE, STATUS_REJECTED}
    assert (frame["received_at"] == pd.Timestamp(NOW)).all()


def test_loadable_rows(frame: pd.DataFrame, masker: HmacMasker) -> None:
    good = loadable(frame)
    assert sorted(good["message_id"]) == ["m1", "m2", "m3"]
    assert str(good["app_version"].dtype) == "Int64"
    rows = by_id(good)
    assert {mid: row["app_version"] for mid, row in rows.items()} == {
        "m1": 2_003_000,
        "m2": 96_000,
        "m3": 3_007_000,
    }
    assert {mid: row["app_version_raw"] for mid, row in rows.items()} == {"m1": "2.3.0", "m2": "0.96", "m3": "3.7"}
    for row in rows.values():
        assert TOKEN_RE.fullmatch(row["masked_ip"])
        assert TOKEN_RE.fullmatch(row["masked_device_id"])
        assert row["mask_key_id"] == masker.key_id
        assert row["create_date"] == date(2023, 11, 14)  # m2 sent at 23:59:59.999 UTC: same date
        assert pd.isna(row["reason_code"]) and pd.isna(row["reason"])
    assert rows["m1"]["masked_ip"] == masker.mask(IP_1)
    assert rows["m2"]["masked_ip"] == masker.mask("2001:db8::a1")  # canonical IPv6
    assert rows["m3"]["masked_ip"] == masker.mask(IP_3)  # not an IP: still masked
    assert rows["m2"]["masked_device_id"] == masker.mask(DEV_2.strip())
    assert (rows["m1"]["user_id"], rows["m1"]["device_type"], rows["m1"]["locale"]) == ("user-1", "android", "RU")
    assert rows["m2"]["locale"] is None and rows["m3"]["locale"] is None


def test_rejected_rows_carry_a_reason_and_only_tokens_of_usable_ip_and_device_id(
    frame: pd.DataFrame, masker: HmacMasker
) -> None:
    bad = rejected(frame)
    rows = by_id(bad)
    assert {mid: row["reason_code"] for mid, row in rows.items()} == EXPECTED_REJECTS
    masked = ("masked_ip", "masked_device_id", "mask_key_id")
    for row in rows.values():
        assert isinstance(row["reason"], str) and row["reason"].strip()
        for column in LOGIN_VALUE_COLUMNS:
            if column not in masked:
                assert pd.isna(row[column]), (row["message_id"], column)
    tokens = {mid: tuple(None if pd.isna(row[c]) else row[c] for c in masked) for mid, row in rows.items()}
    key_id = masker.key_id
    assert tokens == {
        "m4": (None, None, None),  # not JSON
        "m5": (masker.mask(IP_5), None, key_id),  # device_id missing
        "m6": (masker.mask(IP_6), masker.mask(DEV_6), key_id),
        "m7": (None, masker.mask(DEV_5), key_id),  # an ip with a NUL is not masked
        "m8": (masker.mask(IP_1), masker.mask(DEV_1), key_id),  # repeated "ip": the last one counts
        "m9": (None, None, None),  # not a login
    }


def test_no_clear_ip_or_device_id_anywhere_in_the_frame(frame: pd.DataFrame) -> None:
    cells = all_cells(frame)
    text = "\n".join([*cells, repr(frame), frame.to_csv(), repr(frame.attrs)])
    for marker in MARKERS:
        assert marker not in text, marker
        assert not any(marker in cell for cell in cells)


def test_queue_message_and_dead_letter_reprs_hide_the_body(frame: pd.DataFrame) -> None:
    messages = {m.message_id: m for m in MESSAGES}
    reasons = rejected(frame).set_index("message_id")
    letters = [DeadLetter(messages[k], reasons.at[k, "reason_code"], reasons.at[k, "reason"]) for k in EXPECTED_REJECTS]
    texts = [repr(m) for m in MESSAGES] + [str(m) for m in MESSAGES] + [repr(letters)]
    for text in texts:
        for marker in (*MARKERS, "oops_wrong_msg_type", "handle-"):
            assert marker not in text
    assert "m1" in repr(MESSAGES[0])


def test_stats(frame: pd.DataFrame) -> None:
    result = stats(frame)
    assert result.loadable == 3
    assert result.rejected == 6
    assert result.rejected_by_reason == {code: 1 for code in EXPECTED_REJECTS.values()}
    assert result.unparsed_ips == 1 == frame.attrs["unparsed_ips"]


def test_stats_counts_repeated_reasons(masker: HmacMasker) -> None:
    messages = [message(f"x{i}", "nope") for i in range(3)] + [message("y", "[]"), message("z", login())]
    result = stats(mask_messages(messages, masker))
    assert result.rejected_by_reason == {"invalid_json": 3, "not_an_object": 1}
    assert (result.loadable, result.rejected) == (1, 4)


def test_unparsed_ips_counts_only_valid_logins(masker: HmacMasker) -> None:
    messages = [
        message("a", login(ip="unknown")),
        message("b", login(ip="  also not an ip ")),
        message("c", login(ip="::ffff:192.0.2.1")),
        message("d", login(ip="garbage", device_id=...)),  # rejected: its ip is masked but not counted
    ]
    frame = mask_messages(messages, masker)
    assert frame.attrs["unparsed_ips"] == 2
    assert by_id(frame)["c"]["masked_ip"] == masker.mask("192.0.2.1")


def test_empty_batch(masker: HmacMasker) -> None:
    frame = mask_messages([], masker)
    assert frame.empty
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert frame.attrs["unparsed_ips"] == 0
    result = stats(frame)
    assert (result.loadable, result.rejected, result.rejected_by_reason, result.unparsed_ips) == (0, 0, {}, 0)
    assert loadable(frame).empty and rejected(frame).empty


def test_all_rejected_batch(masker: HmacMasker) -> None:
    frame = mask_messages([message("a", "nope"), message("b", "{}")], masker, now=NOW)
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert loadable(frame).empty
    assert list(rejected(frame)["reason_code"]) == ["invalid_json", "not_a_login"]
    assert stats(frame).loadable == 0


def test_all_valid_batch(masker: HmacMasker) -> None:
    frame = mask_messages([message("a", login()), message("b", login(ip=IP_4))], masker, now=NOW)
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert rejected(frame).empty
    assert frame["reason_code"].isna().all()
    assert list(frame["masked_ip"]) == [masker.mask(IP_1), masker.mask(IP_4)]


def test_equal_values_share_tokens_across_messages(masker: HmacMasker) -> None:
    frame = mask_messages(
        [message("a", login(ip="192.0.2.1")), message("b", login(ip="::ffff:192.0.2.1", device_id=f" {DEV_1}"))],
        masker,
    )
    assert frame["masked_ip"].nunique() == 1
    assert frame["masked_device_id"].nunique() == 1


@pytest.mark.parametrize("sent", [None, "", "garbage"])
def test_missing_sent_timestamp_gives_no_create_date(masker: HmacMasker, sent: str | None) -> None:
    frame = mask_messages([message("a", login(), sent=sent)], masker)
    assert stats(frame).loadable == 1
    assert pd.isna(frame["create_date"].iloc[0])


def test_received_at_defaults_to_now(masker: HmacMasker) -> None:
    before = datetime.now(UTC)
    frame = mask_messages([message("a", login())], masker)
    after = datetime.now(UTC)
    assert before <= frame["received_at"].iloc[0].to_pydatetime() <= after


# The snowman marks clear ip/device_id values; no other generated text contains one.
TEXT = st.text(st.characters(exclude_characters="\u2603"), max_size=40)
BODIES = st.one_of(
    TEXT,
    st.builds(
        login,
        ip=TEXT.map(lambda s: "ip-\u2603-" + s),
        device_id=TEXT.map(lambda s: "dev-\u2603-" + s),
        app_version=st.sampled_from(["1", "2.3.0", "0.96", "bad", ""]),
        locale=st.none() | TEXT,
        user_id=st.text(st.characters(exclude_characters="\u2603"), max_size=130),
    ),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(BODIES, max_size=12))
def test_any_batch_has_one_row_per_message_and_no_clear_values(bodies: list[str]) -> None:
    masker = HmacMasker(KEY)
    messages = [message(f"m{i}", b) for i, b in enumerate(bodies)]
    frame = mask_messages(messages, masker, now=NOW)
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert list(frame["message_id"]).count("m0") == (1 if bodies else 0)
    assert sorted(frame["message_id"]) == sorted(m.message_id for m in messages)
    assert set(frame["status"]) <= {STATUS_LOADABLE, STATUS_REJECTED}
    result = stats(frame)
    assert result.loadable + result.rejected == len(messages)
    assert sum(result.rejected_by_reason.values()) == result.rejected
    assert "\u2603" not in "".join(all_cells(frame))


# --- batches_by_size -----------------------------------------------------------------------------


def sizes(batches: list[list[tuple[int, int]]]) -> list[int]:
    return [sum(size for _, size in batch) for batch in batches]


def batched(item_sizes: list[int]) -> list[list[tuple[int, int]]]:
    items = list(enumerate(item_sizes))
    return list(batches_by_size(items, lambda item: item[1]))


@settings(max_examples=200)
@given(st.lists(st.integers(0, MAX_BATCH_BYTES + 1024) | st.integers(0, 2048), max_size=60))
def test_batches_by_size_invariants(item_sizes: list[int]) -> None:
    batches = batched(item_sizes)
    assert [item for batch in batches for item in batch] == list(enumerate(item_sizes))  # order, all items
    for batch, total in zip(batches, sizes(batches), strict=True):
        assert 1 <= len(batch) <= MAX_BATCH
        assert total <= MAX_BATCH_BYTES or len(batch) == 1
    # Greedy: a batch is only closed when the next item would not fit.
    for batch, following in itertools.pairwise(batches):
        assert len(batch) == MAX_BATCH or sum(s for _, s in batch) + following[0][1] > MAX_BATCH_BYTES


def test_batches_by_size_examples() -> None:
    assert MAX_BATCH == 10
    assert batched([]) == []
    assert [len(b) for b in batched([1] * 25)] == [10, 10, 5]
    assert [len(b) for b in batched([MAX_BATCH_BYTES // 2] * 2)] == [2]  # exactly the limit fits
    assert [len(b) for b in batched([MAX_BATCH_BYTES // 2 + 1] * 2)] == [1, 1]
    assert [len(b) for b in batched([10, MAX_BATCH_BYTES * 3, 10])] == [1, 1, 1]  # a lone large item
    assert [len(b) for b in batched([MAX_BATCH_BYTES * 3])] == [1]
    assert [len(b) for b in batched([0] * 11)] == [10, 1]


def test_batches_by_size_with_real_bodies() -> None:
    bodies = ["😀" * (MAX_BATCH_BYTES // 16)] * 5  # 4 bytes per character in UTF-8
    batches = list(batches_by_size(bodies, lambda body: len(body.encode())))
    assert [b for batch in batches for b in batch] == bodies
    assert all(sum(len(b.encode()) for b in batch) <= MAX_BATCH_BYTES for batch in batches)
    assert [len(batch) for batch in batches] == [4, 1]
