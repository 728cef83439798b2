"""Keep received messages invisible for as long as the run still holds them.

A run that takes longer than the visibility timeout would otherwise see its messages handed to another
consumer mid-run. The heartbeat re-sets their visibility (ChangeMessageVisibilityBatch) every third of the
timeout until each is deleted or the run ends; when the run dies, so does the heartbeat, and the messages
come back after at most one timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)
MAX_BATCH = 10


class HeldMessage(Protocol):
    message_id: str
    receipt_handle: str


class VisibilityHeartbeat:
    """A daemon thread extending the visibility of the messages it holds."""

    def __init__(self, change_visibility: Callable[[list[dict[str, Any]]], dict[str, Any]], timeout: int) -> None:
        self._change_visibility = change_visibility
        self._timeout = timeout
        self._interval = max(timeout / 3, 0.5)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.extensions = 0  # messages extended so far, for metadata and tests

    def hold(self, messages: Iterable[HeldMessage]) -> None:
        """Start extending these messages' visibility (starts the thread on first use)."""
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

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                held = list(self._held.items())
            for start in range(0, len(held), MAX_BATCH):
                if self._stop.is_set():
                    return
                self._extend(held[start : start + MAX_BATCH])

    def _extend(self, batch: Sequence[tuple[str, str]]) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": self._timeout}
            for i, (_, handle) in enumerate(batch)
        ]
        try:
            response = self._change_visibility(entries)
        except Exception as err:  # a missed beat only risks a redelivery, which the load deduplicates
            log.warning("visibility heartbeat failed for %d messages: %s", len(batch), str(err).split("\n")[0])
            return
        failed = response.get("Failed", [])
        self.extensions += len(batch) - len(failed)
        if failed:
            log.warning("visibility heartbeat: %d of %d messages could not be extended", len(failed), len(batch))
