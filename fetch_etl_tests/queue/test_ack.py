"""The decision and the ack plan on their own: which messages are evaluated, forwarded and deleted.

Pure functions (no servers): `login_frame.stored_status` decides from what is stored, `ack.dead_letter_keys` and
`ack.durable_keys` say what to forward and what may be deleted. The end-to-end proofs are in
test_ack_faults.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fetch_etl.logins import frame as login_frame
from fetch_etl.logins.masking import HmacMasker
from fetch_etl.queue import ack
from fetch_etl.queue.messages import DeadLetter, QueueMessage, queue_message
from fetch_etl.warehouse.load import LoadResult, StoredOutcome
from fetch_etl_tests.helpers import FOO_BAR, login_body

MASKER = HmacMasker(bytes(range(32)))
REDRIVE = "2026-12-01T10:00:00.123456+00:00"
REDRIVE_TIME = datetime.fromisoformat(REDRIVE)
LOADED = StoredOutcome(loaded=True, rejected=False, dead_lettered=False, redriven_at=None)
FORWARDED = StoredOutcome(loaded=False, rejected=True, dead_lettered=True, redriven_at=None)
AWAITING = StoredOutcome(loaded=False, rejected=True, dead_lettered=False, redriven_at=None)


def message(mid: str, body: str = "", receive_count: int = 1, **attrs: str) -> QueueMessage:
    return QueueMessage(mid, f"h-{mid}", body or login_body(), "1700000000000", receive_count, **attrs)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, None),
        (LOADED, login_frame.STATUS_ALREADY_LOADED),
        (FORWARDED, login_frame.STATUS_ALREADY_DEAD_LETTERED),
        (AWAITING, login_frame.STATUS_AWAITING_DEAD_LETTER),
    ],
)
def test_a_stored_outcome_decides_a_plain_message(stored: StoredOutcome | None, expected: str | None) -> None:
    assert login_frame.stored_status(message("m"), stored) == expected


def test_a_new_redrive_is_evaluated_afresh_once() -> None:
    redriven = message("copy", original_message_id="orig", redriven_at=REDRIVE)
    assert login_frame.stored_status(redriven, FORWARDED) is None, "a new redrive of a reject is evaluated again"
    evaluated = StoredOutcome(loaded=False, rejected=True, dead_lettered=True, redriven_at=REDRIVE_TIME)
    assert login_frame.stored_status(redriven, evaluated) == login_frame.STATUS_ALREADY_DEAD_LETTERED, "but only once"
    assert login_frame.stored_status(redriven, LOADED) == login_frame.STATUS_ALREADY_LOADED, (
        "a stored login always wins"
    )
    garbled = message("copy", original_message_id="orig", redriven_at="yesterday")
    assert login_frame.stored_status(garbled, FORWARDED) == login_frame.STATUS_ALREADY_DEAD_LETTERED


def test_only_a_message_without_a_stored_outcome_can_become_poison() -> None:
    messages = [message("loaded", receive_count=50), message("fresh", receive_count=50)]
    frame = login_frame.mask_messages(messages, MASKER, max_receive_count=10, stored={"loaded": LOADED})
    status = dict(zip(frame["message_id"], frame["status"], strict=True))
    assert status == {"loaded": login_frame.STATUS_ALREADY_LOADED, "fresh": login_frame.STATUS_REJECTED}
    assert frame.loc[frame["message_id"] == "fresh", "reason_code"].item() == "poison"
    assert login_frame.stats(frame).already_stored == 1


def test_a_redriven_copy_is_keyed_by_its_original_id_and_keeps_its_sent_date() -> None:
    raw = {
        "MessageId": "copy-id",
        "ReceiptHandle": "h",
        "Body": login_body(),
        "Attributes": {"SentTimestamp": "1800000000000", "ApproximateReceiveCount": "1"},
        "MessageAttributes": {
            "original_message_id": {"DataType": "String", "StringValue": "orig-id"},
            "original_sent_timestamp": {"DataType": "String", "StringValue": "1700000000000"},
            "redriven_at": {"DataType": "String", "StringValue": REDRIVE},
        },
    }
    copy = queue_message(raw)
    assert (copy.message_id, copy.key, copy.sent_timestamp) == ("copy-id", "orig-id", "1700000000000")
    frame = login_frame.mask_messages([copy], MASKER)
    row = frame.iloc[0]
    assert (row["message_id"], str(row["create_date"]), row["redriven_at"]) == ("orig-id", "2023-11-14", REDRIVE_TIME)
    letter = DeadLetter(copy, "not_a_login", "why")
    assert letter.attributes()["original_message_id"]["StringValue"] == "orig-id"
    assert letter.attributes()["original_sent_timestamp"]["StringValue"] == "1700000000000"
    assert letter.size() > len(copy.body.encode()), "attributes count toward SQS's size limit"


def test_the_ack_plan_deletes_exactly_what_is_durable() -> None:
    messages = [
        message("new-login"),
        message("new-reject", FOO_BAR),
        message("superseded", FOO_BAR),
        message("was-loaded"),
        message("was-forwarded", FOO_BAR),
        message("awaiting", FOO_BAR),
        message("refused", FOO_BAR),
        message("elsewhere", FOO_BAR),
    ]
    stored = {"was-loaded": LOADED, "was-forwarded": FORWARDED, "awaiting": AWAITING}
    frame = login_frame.mask_messages(messages, MASKER, stored=stored)
    load = LoadResult(staged=1, inserted=1, rejects_recorded=3, superseded=["superseded"])

    to_forward = ack.dead_letter_keys(frame, load)
    assert sorted(to_forward) == ["awaiting", "elsewhere", "new-reject", "refused"]

    forwarding = ack.Forwarding(
        forwarded=["new-reject"],
        done_before=["awaiting"],
        failed={"refused": "AccessDenied"},
        held_elsewhere=["elsewhere"],
    )
    durable = ack.durable_keys(frame, load, forwarding)
    assert sorted(durable) == ["awaiting", "new-login", "new-reject", "superseded", "was-forwarded", "was-loaded"]
    assert forwarding.errors_by_code() == {"AccessDenied": 1}


def test_every_copy_of_a_key_is_acknowledged_together() -> None:
    original = message("orig")
    copy = message("copy", original_message_id="orig", redriven_at=REDRIVE)
    groups = ack.by_key([original, copy, message("other")])
    assert [m.message_id for m in groups["orig"]] == ["orig", "copy"]
    assert set(groups) == {"orig", "other"}


def test_sent_time_reads_sqs_epoch_milliseconds() -> None:
    from fetch_etl.logins.records import sent_time

    assert sent_time("1700000000000") == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert sent_time("garbage") is None
