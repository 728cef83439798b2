"""The masking-key registry (`fetch_etl_mask_keys`): which key the stored tokens were made with.

A run refuses a key or mode other than the active one, and waits (bounded) while `fetch-etl rotate-key`
runs: loading during a rotation would write old-key rows behind the rotation's cursor (or rows on the
new key before it is active), so the run stops before it receives anything and the messages wait in the
queue. The rotation only looks at its own lock, so a run's key check never makes `rotate-key` fail.
"""

from __future__ import annotations

import psycopg

from fetch_etl.logins.masking import MaskingKeyError
from fetch_etl.warehouse import locks
from fetch_etl.warehouse.locks import AdvisoryLock, LockWaitError

ROTATION_WAIT_SECONDS = 10.0  # a run rides out a short rotation, then stops
REGISTRY_WAIT_SECONDS = 10.0  # another key check or a retire holds the registry for milliseconds


class RotationInProgressError(LockWaitError):
    """A rotation is running; this run stops before receiving anything."""


def wait_for_rotation(conn: psycopg.Connection, wait_seconds: float) -> None:
    """Return once no `rotate-key` holds its lock; after `wait_seconds`, fail saying a rotation is running."""
    running = locks.wait_until_free(conn, AdvisoryLock.ROTATION, wait_seconds=wait_seconds)
    if running:
        raise RotationInProgressError(
            f"a `fetch-etl rotate-key` is re-keying this database ({running[0].describe()} of "
            f"{AdvisoryLock.ROTATION.purpose}); this run waited {wait_seconds:g} s for it and stops before receiving "
            "anything, so the messages stay in the queue; once it finishes, runs must use the new key"
        )


def check_mask_key(
    conn: psycopg.Connection, key_id: str, mode: str, *, rotation_wait_seconds: float = ROTATION_WAIT_SECONDS
) -> None:
    """Refuse a key or mode other than the one the stored tokens were made with; register it on first use.

    Loading with another key would split every duplicate across two token spaces, silently. The
    registry (`fetch_etl_mask_keys`) names the active key; `rotate-key` retires the old one.
    """
    wait_for_rotation(conn, rotation_wait_seconds)
    with conn.transaction(), conn.cursor() as cur:
        locks.acquire(
            conn, AdvisoryLock.KEY_REGISTRY, wait_seconds=REGISTRY_WAIT_SECONDS, xact=True, doing="the key check"
        )
        cur.execute("SELECT key_id, mode FROM fetch_etl_mask_keys WHERE retired_at IS NULL")
        active = cur.fetchall()
        if not active:  # first use, possibly on a table that predates the registry: its tokens tell
            cur.execute(
                "SELECT mask_key_id FROM user_logins WHERE mask_key_id IS NOT NULL AND mask_key_id <> %s LIMIT 1",
                (key_id,),
            )
            active = [(row[0], "unknown") for row in cur.fetchall()]
        for active_id, active_mode in active:
            if active_id != key_id or active_mode not in (mode, "unknown"):
                raise MaskingKeyError(
                    f"this run's masking key (key id {key_id}, mode {mode}) is not the one the stored tokens were "
                    f"made with (key id {active_id}, mode {active_mode}); loading would split duplicates across "
                    "two token spaces. Set PII_MASKING_KEY/PII_MASKING_MODE to that key and mode, or re-key the "
                    "data first with `fetch-etl rotate-key` (siv mode); nothing was received from the queue"
                )
        cur.execute(
            "INSERT INTO fetch_etl_mask_keys (key_id, mode) VALUES (%s, %s) ON CONFLICT (key_id) DO NOTHING",
            (key_id, mode),
        )


def retire_mask_key(conn: psycopg.Connection, old_key_id: str, new_key_id: str, mode: str) -> None:
    """After a completed rotation: the new key becomes the active one."""
    with conn.transaction(), conn.cursor() as cur:
        locks.acquire(
            conn, AdvisoryLock.KEY_REGISTRY, wait_seconds=REGISTRY_WAIT_SECONDS, xact=True, doing="retiring the old key"
        )
        cur.execute(
            "UPDATE fetch_etl_mask_keys SET retired_at = now() WHERE key_id = %s AND retired_at IS NULL",
            (old_key_id,),
        )
        cur.execute(
            "INSERT INTO fetch_etl_mask_keys (key_id, mode) VALUES (%s, %s) "
            "ON CONFLICT (key_id) DO UPDATE SET retired_at = NULL, mode = EXCLUDED.mode",
            (new_key_id, mode),
        )
