"""Run one ingest in this process and SIGKILL it at a chosen point (for the fault tests).

    python -m fetch_etl_tests.fault_runner after_receive|after_mask|mid_load|after_commit|mid_delete|after_dead_letter

The pipeline reads its settings from the environment, exactly as `dagster asset materialize` does. The
kill is a real SIGKILL of this process: no exception handler, finally block or atexit hook runs. Just
before dying the runner writes what it saw at the kill point to FAULT_EVIDENCE (JSON), so the test can
prove where the kill landed: rows inside the still-open load transaction, deletes that went through.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

KILL_POINTS = ("after_receive", "after_mask", "mid_load", "after_commit", "mid_delete", "after_dead_letter")


def _die(**evidence: Any) -> None:
    if path := os.environ.get("FAULT_EVIDENCE"):
        Path(path).write_text(json.dumps(evidence))
    os.kill(os.getpid(), signal.SIGKILL)


def _then_die(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        _die()

    return wrapper


def install(point: str) -> None:
    """Patch the pipeline so the process dies right after (or, for mid_*, inside) `point`."""
    from fetch_etl.defs import assets
    from fetch_etl.logins import frame as login_frame
    from fetch_etl.queue import ack
    from fetch_etl.queue.messages import QueueMessage
    from fetch_etl.queue.resource import SqsResource
    from fetch_etl.warehouse import load as warehouse_load

    if point == "after_receive":
        SqsResource.receive = _then_die(SqsResource.receive)  # type: ignore[method-assign]
    elif point == "after_mask":
        login_frame.mask_messages = _then_die(login_frame.mask_messages)
    elif point == "mid_load":
        original_insert = warehouse_load._insert_logins

        def insert_then_die(cur: Any, *args: Any, **kwargs: Any) -> Any:
            inserted, _path = original_insert(cur, *args, **kwargs)
            (in_transaction,) = cur.execute("SELECT count(*) FROM user_logins").fetchone()
            _die(inserted=inserted, rows_in_open_transaction=in_transaction)  # the COPY done, no COMMIT yet

        warehouse_load._insert_logins = insert_then_die
    elif point == "after_commit":
        assets.load_run = _then_die(assets.load_run)  # committed, nothing forwarded or deleted
    elif point == "after_dead_letter":
        ack.forward_dead_letters = _then_die(ack.forward_dead_letters)  # forwarded and recorded, none deleted
    elif point == "mid_delete":
        original_delete = SqsResource.delete

        def delete_half(self: SqsResource, messages: Sequence[QueueMessage]) -> list[str]:
            half = messages[: len(messages) // 2]
            failed = original_delete(self, half)
            _die(deleted=len(half) - len(failed), held=len(messages))

        SqsResource.delete = delete_half  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}; expected one of {', '.join(KILL_POINTS)}")


def main(argv: Sequence[str]) -> int:
    install(argv[0])
    from dagster import DagsterInstance

    from fetch_etl.definitions import defs

    result = defs().resolve_job_def("ingest_logins").execute_in_process(instance=DagsterInstance.ephemeral())
    return 0 if result.success else 1  # reached only when the kill point was never passed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
