"""Parallel receivers for one run's messages: N threads, each asking SQS for up to ten messages at a time.

One ReceiveMessage returns at most ten messages and costs a full round trip (about 20 ms to real SQS), so a
single receiver caps a run at a few hundred messages per second; N receivers overlap their round trips.
Short polls (WaitTimeSeconds=0) are used while receives come back full, so a deep queue never waits. When
one comes back short, the receivers pause while `queue_empty` (one GetQueueAttributes call) is asked: no
visible message left ends the drain at once, without the empty long poll's full wait; otherwise receivers
long-poll, and the first empty long poll ends the drain for all of them. A shared reservation count keeps
the distinct messages taken within `limit`.

Receiving also stops, whichever comes first, when (see docs/reliability.md, "Every run ends"):
- `max_bytes` of bodies are held (the calls already in flight are kept: at most `threads` x 10 messages more);
- `max_seconds` have passed (the caller gives half the visibility timeout: what the heartbeat can cover);
- a message the run already holds comes back at least `expired_after` seconds after it was first received:
  its visibility expired, so receiving has outrun the heartbeat and going on would only go round in circles.
  (A copy within that time is a racing duplicate delivery, not an expiry; either way the newest handle wins.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Generic, Protocol, TypeVar

from fetch_etl.queue.messages import MAX_BATCH

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
    `queue_empty()`, when given, answers whether the queue holds no visible message; it is asked once each
    time receives turn from full to short, and an error or a False answer leaves the long poll to decide.
    `stop_reason` says why receiving ended: drained, limit, bytes, deadline or redelivered.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], list[M]],
        hold: Callable[[Iterable[M]], None],
        *,
        limit: int,
        threads: int,
        wait_time_seconds: int,
        max_bytes: int | None = None,
        size: Callable[[M], int] = lambda _: 0,
        max_seconds: float | None = None,
        expired_after: float = 0.0,
        queue_empty: Callable[[], bool] | None = None,
    ) -> None:
        self._fetch = fetch
        self._hold = hold
        self._limit = limit
        self._threads = max(1, threads)
        self._wait = max(0, wait_time_seconds)
        self._max_bytes = max_bytes
        self._size = size
        self._max_seconds = max_seconds
        self._expired_after = expired_after
        self._queue_empty = queue_empty
        self._deadline: float | None = None
        self._received: dict[str, M] = {}
        self._first_seen: dict[str, float] = {}
        self._bytes = 0
        self._reserved = 0  # messages asked for by receives still in flight
        self._looks_empty = False
        self._asking = False  # a receiver is asking queue_empty(); the others wait for its answer
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self.stop_reason = ""

    def run(self, progress: Callable[[int], None] | None = None) -> list[M]:
        """Receive until a limit, the deadline, a returning message or an empty long poll ends it."""
        if self._max_seconds is not None:
            self._deadline = time.monotonic() + self._max_seconds
        if self._limit <= 0:
            self.stop_reason = "limit"
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
        self.stop_reason = self.stop_reason or "limit"
        return list(self._received.values())

    def count(self) -> int:
        with self._lock:
            return len(self._received)

    @property
    def received_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def _stop(self, reason: str) -> None:
        """Under the lock: end receiving for every thread; the first reason is the one reported."""
        self.stop_reason = self.stop_reason or reason
        self._done.set()

    def _reserve(self) -> tuple[int, int]:
        """(how many to ask for, wait seconds); 0 when this receiver should stop."""
        with self._lock:
            while self._asking and not self._done.is_set():
                self._answered.wait()
            if self._done.is_set():
                return 0, 0
            remaining = None if self._deadline is None else self._deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._stop("deadline")
                return 0, 0
            want = min(MAX_BATCH, self._limit - len(self._received) - self._reserved)
            if want <= 0:
                return 0, 0
            self._reserved += want
            wait_seconds = self._wait if self._looks_empty else 0
            if remaining is not None:
                wait_seconds = min(wait_seconds, int(remaining))  # a long poll never outlasts the deadline
            return want, wait_seconds

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
                self._take(batch)
                turned_short = len(batch) < want and not self._looks_empty
                self._looks_empty = len(batch) < want
                if not batch and wait_seconds == self._wait:
                    self._stop("drained")  # an empty long poll (or an empty poll when long polling is off)
                ask = turned_short and self._queue_empty is not None and not self._done.is_set() and not self._asking
                self._asking = self._asking or ask
            if ask:
                self._ask_queue_empty()

    def _ask_queue_empty(self) -> None:
        """Ask whether anything visible is left; the other receivers wait for the answer (one round trip)."""
        assert self._queue_empty is not None
        try:
            empty = self._queue_empty()
        except Exception:  # an unanswered question changes nothing: the long poll decides
            empty = False
        with self._lock:
            self._asking = False
            if empty:
                self._stop("drained")
            self._answered.notify_all()

    def _take(self, batch: list[M]) -> None:
        """Under the lock: keep each message's newest copy, hold the batch, stop if a limit is reached."""
        now = time.monotonic()
        for message in batch:
            first = self._first_seen.setdefault(message.message_id, now)
            if message.message_id in self._received:
                if now - first >= self._expired_after:
                    self._stop("redelivered")
            else:
                self._bytes += self._size(message)
            self._received[message.message_id] = message
        if batch:
            self._hold(batch)
        if len(self._received) >= self._limit:
            self._stop("limit")
        if self._max_bytes is not None and self._bytes >= self._max_bytes:
            self._stop("bytes")
