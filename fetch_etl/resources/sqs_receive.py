"""Parallel receivers for one run's batch: N threads, each asking SQS for up to ten messages at a time.

One ReceiveMessage returns at most ten messages and costs a full round trip (about 20 ms to real SQS), so a
single receiver caps a run at a few hundred messages per second; N receivers overlap their round trips.
Short polls (WaitTimeSeconds=0) are used while receives come back full, so a deep queue never waits; once
one comes back short the queue looks empty and receivers long-poll, and the first empty long poll ends
the drain for all of them. A shared reservation count keeps the distinct messages taken within `limit`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Generic, Protocol, TypeVar

MAX_BATCH = 10  # SQS's limit per ReceiveMessage
PROGRESS_SECONDS = 5.0


class Identified(Protocol):
    @property
    def message_id(self) -> str: ...


M = TypeVar("M", bound=Identified)


class ParallelReceiver(Generic[M]):
    """Drains up to `limit` distinct messages with `threads` receivers sharing one dedupe map.

    `fetch(max_messages, wait_seconds)` makes one receive call and returns the converted messages;
    `hold(messages)` is called under the receiver's lock for every batch (visibility heartbeat).
    A message received twice keeps its newest receipt handle: each MessageId is handled once per run.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], list[M]],
        hold: Callable[[Iterable[M]], None],
        *,
        limit: int,
        threads: int,
        wait_time_seconds: int,
    ) -> None:
        self._fetch = fetch
        self._hold = hold
        self._limit = limit
        self._threads = max(1, threads)
        self._wait = max(0, wait_time_seconds)
        self._received: dict[str, M] = {}
        self._reserved = 0  # messages asked for by receives still in flight
        self._looks_empty = False
        self._done = threading.Event()
        self._lock = threading.Lock()

    def run(self, progress: Callable[[int], None] | None = None) -> list[M]:
        """Receive until the limit is reached or an empty long poll says the queue is drained."""
        if self._limit <= 0:
            return []
        with ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="sqs-receive") as pool:
            futures = [pool.submit(self._receive_loop) for _ in range(self._threads)]
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in finished):
                    self._done.set()  # the others stop after their current call; the run fails with this error
                    break
                if pending and progress is not None:
                    progress(self.count())
            for future in futures:
                if future.done() and (error := future.exception()) is not None:
                    raise error
        return list(self._received.values())

    def count(self) -> int:
        with self._lock:
            return len(self._received)

    def _reserve(self) -> tuple[int, int]:
        """(how many to ask for, wait seconds); 0 when this receiver should stop."""
        with self._lock:
            want = min(MAX_BATCH, self._limit - len(self._received) - self._reserved)
            if self._done.is_set() or want <= 0:
                return 0, 0
            self._reserved += want
            return want, self._wait if self._looks_empty else 0

    def _receive_loop(self) -> None:
        while True:
            want, wait_seconds = self._reserve()
            if want == 0:
                return
            try:
                batch = self._fetch(want, wait_seconds)
            except BaseException:
                with self._lock:
                    self._reserved -= want
                raise
            with self._lock:  # release the reservation and count the batch at once, or another receiver overshoots
                self._reserved -= want
                for message in batch:
                    self._received[message.message_id] = message
                if batch:
                    self._hold(batch)
                self._looks_empty = len(batch) < want
                if not batch and wait_seconds == self._wait:
                    self._done.set()  # an empty long poll (or an empty poll when long polling is off): drained
