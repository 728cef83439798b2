"""The ack step: after the load commits, forward rejects to the dead-letter queue and delete what is durable.

The rule (docs/reliability.md): a message's outcome is decided once, from what is stored, and a message is
deleted exactly when its outcome is durable — its login or its reject row committed and, for a reject, its
dead-letter copy sent. Nothing here raises for SQS trouble: after the commit, a failure to forward or to
delete leaves the message on the queue, and its redelivery is recognised from what is stored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg

from fetch_etl.logins import frame as login_frame
from fetch_etl.queue.messages import DeadLetter, QueueMessage
from fetch_etl.queue.resource import SqsResource
from fetch_etl.warehouse.load import LoadResult, claim_rejects, record_forwarding

if TYPE_CHECKING:  # pandas loads where a run's messages are masked, not when Dagster loads the definitions
    import pandas as pd


@dataclass(frozen=True)
class Forwarding:
    """What the dead-letter step did with the rejects this run holds (keys)."""

    forwarded: list[str] = field(default_factory=list)  # sent now
    done_before: list[str] = field(default_factory=list)  # another run forwarded it meanwhile
    failed: dict[str, str] = field(default_factory=dict)  # refused: stays on the queue; key -> SQS error code
    held_elsewhere: list[str] = field(default_factory=list)  # another run is forwarding it: left for redelivery

    @property
    def durable(self) -> list[str]:
        return [*self.forwarded, *self.done_before]

    def errors_by_code(self) -> dict[str, int]:
        return dict(Counter(self.failed.values()))


def by_key(messages: Iterable[QueueMessage]) -> dict[str, list[QueueMessage]]:
    """Messages grouped by the key their outcome is stored under (a redriven copy shares its original's)."""
    groups: dict[str, list[QueueMessage]] = defaultdict(list)
    for message in messages:
        groups[message.key].append(message)
    return dict(groups)


def forward_dead_letters(
    conn: psycopg.Connection, sqs: SqsResource, keys: Sequence[str], messages: Mapping[str, Sequence[QueueMessage]]
) -> Forwarding:
    """Forward the recorded rejects among `keys` that have no dead-letter copy yet, claiming each first.

    The claim (a row lock held while the copy is sent) makes one run the forwarder of a reject, so two
    runs holding the same message never both forward it; the reason sent is the one stored.
    """
    if not keys:
        return Forwarding()
    with conn.transaction(), conn.cursor() as cur:
        claimed = claim_rejects(cur, keys)
        pending = [c for c in claimed if not c.dead_lettered]
        sent = sqs.dead_letter([DeadLetter(messages[c.message_id][0], c.reason_code, c.reason) for c in pending])
        record_forwarding(cur, sent.forwarded, sent.failed)
    claimed_keys = {c.message_id for c in claimed}
    return Forwarding(
        forwarded=sent.forwarded,
        done_before=[c.message_id for c in claimed if c.dead_lettered],
        failed=sent.failed,
        held_elsewhere=[key for key in dict.fromkeys(keys) if key not in claimed_keys],
    )


def dead_letter_keys(frame: pd.DataFrame, load: LoadResult) -> list[str]:
    """Rejects of this run that need their dead-letter copy: new ones (unless a login superseded them)
    and stored ones still awaiting it."""
    superseded = set(load.superseded)
    new = [key for key in login_frame.keys_with_status(frame, login_frame.STATUS_REJECTED) if key not in superseded]
    return [*new, *login_frame.keys_with_status(frame, login_frame.STATUS_AWAITING_DEAD_LETTER)]


def durable_keys(frame: pd.DataFrame, load: LoadResult, forwarding: Forwarding) -> list[str]:
    """Keys whose outcome is durable now: these messages may be deleted from the queue."""
    stored = login_frame.keys_with_status(
        frame, login_frame.STATUS_LOADABLE, login_frame.STATUS_ALREADY_LOADED, login_frame.STATUS_ALREADY_DEAD_LETTERED
    )
    return list(dict.fromkeys([*stored, *load.superseded, *forwarding.durable]))


def acknowledge(sqs: SqsResource, messages: Mapping[str, Sequence[QueueMessage]], keys: Iterable[str]) -> list[str]:
    """Delete every received copy of each key; returns the MessageIds not deleted (they come back)."""
    return sqs.delete([message for key in keys for message in messages[key]])


@dataclass(frozen=True)
class Acknowledgement:
    """What the ack step did with one run's messages."""

    forwarding: Forwarding
    deleted: int  # received copies deleted from the queue
    delete_failures: list[str]  # MessageIds not deleted: they come back and are recognised from what is stored
    visibility_extensions: int  # the heartbeat's extensions over the run


def acknowledge_run(
    conn: psycopg.Connection, sqs: SqsResource, frame: pd.DataFrame, load: LoadResult, received: Iterable[QueueMessage]
) -> Acknowledgement:
    """The ack step, once the load has committed: forward the rejects that need a dead-letter copy, delete
    every message whose outcome is now durable, and hand the rest back (the heartbeat stops; they reappear
    after one visibility timeout)."""
    messages = by_key(received)
    forwarding = forward_dead_letters(conn, sqs, dead_letter_keys(frame, load), messages)
    durable = durable_keys(frame, load, forwarding)
    failed = acknowledge(sqs, messages, durable)
    extensions = sqs.release()
    deleted = sum(len(messages[key]) for key in durable) - len(failed)
    return Acknowledgement(forwarding, deleted, failed, extensions)
