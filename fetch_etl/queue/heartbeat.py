"""Keep received messages invisible for as long as the run still holds them.

A run that takes longer than the visibility timeout would otherwise see its messages handed to another
consumer mid-run. The heartbeat re-sets their visibility (ChangeMessageVisibilityBatch) on a fixed schedule,
every third of the timeout, until each is deleted or the run ends; when the run dies, so does the heartbeat,
and the messages come back after at most one timeout.

A beat sends its batches over `threads` parallel calls (as many as the receivers use), so one beat over all a
receive phase of half the visibility timeout took lasts at most about that long again, and every message is
re-extended within one timeout (docs/reliability.md, "Every run ends"). Only the newest receipt handle of a
message still held is ever sent: a handle replaced by a later receive, or released, is dropped at send time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fetch_etl.queue.messages import MAX_BATCH

log = logging.getLogger(__name__)


class HeldMessage(Protocol):
    message_id: str
    receipt_handle: str


class VisibilityHeartbeat:
    """A daemon thread extending the visibility of the messages it holds."""

    def __init__(
        self, change_visibility: Callable[[list[dict[str, Any]]], dict[str, Any]], timeout: int, threads: int = 1
    ) -> None:
        self._change_visibility = change_visibility
        self._timeout = timeout
        self._interval = max(timeout / 3, 0.5)
        self._threads = max(1, threads)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.extensions = 0  # messages extended so far, for metadata and tests

    def hold(self, messages: Iterable[HeldMessage]) -> None:
        """Start extending these messages' visibility (starts the thread on first use); newest handle wins."""
        with self._lock:
            self._held.update((m.message_id, m.receipt_handle) for m in messages)
            if self._thread is None and self._held:
                self._thread = threading.Thread(target=self._run, name="sqs-visibility-heartbeat", daemon=True)
                self._thread.start()

    def release(self, message_ids: Iterable[str]) -> None:
        """Stop extending these (deleted, or handed back)."""
        with self._lock:
            for message_id in message_ids:
                self._held.pop(message_id, None)

    def stop(self) -> None:
        """End the thread; held messages reappear on the queue when their current timeout runs out."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)
        with self._lock:
            self._held.clear()

    def beat(self) -> None:
        """Extend every held message once, `threads` batches at a time."""
        with self._lock:
            held = list(self._held.items())
        batches = [held[start : start + MAX_BATCH] for start in range(0, len(held), MAX_BATCH)]
        if len(batches) <= 1 or self._threads == 1:
            for batch in batches:
                self._extend(batch)
            return
        with ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="sqs-heartbeat") as pool:
            list(pool.map(self._extend, batches))

    def _run(self) -> None:
        next_beat = time.monotonic() + self._interval
        while not self._stop.wait(max(0.0, next_beat - time.monotonic())):
            next_beat += self._interval  # a fixed schedule: a slow beat does not push the next one later
            self.beat()
            next_beat = max(next_beat, time.monotonic())

    def _extend(self, batch: Sequence[tuple[str, str]]) -> None:
        if self._stop.is_set():
            return
        with self._lock:  # only what is still ours, under its newest handle
            current = [(mid, handle) for mid, handle in batch if self._held.get(mid) == handle]
        if not current:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": self._timeout}
            for i, (_, handle) in enumerate(current)
        ]
        try:
            response = self._change_visibility(entries)
        except Exception as err:  # a missed beat only risks a redelivery, which the load deduplicates
            log.warning("visibility heartbeat failed for %d messages: %s", len(current), str(err).split("\n")[0])
            return
        failed = response.get("Failed", [])
        with self._lock:
            self.extensions += len(current) - len(failed)
        if failed:
            log.warning("visibility heartbeat: %d of %d messages could not be extended", len(failed), len(current))
