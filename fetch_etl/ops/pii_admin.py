"""Operator tools for reversible (`siv`) tokens: `reveal` with one audit line per call, and `rotate-key`.

The logic lives here over a psycopg connection; the `fetch-etl` commands only parse options and print.
Clear values exist only in the returned objects (printed to the operator's terminal by `reveal`); the
audit line, log lines and every error message name counts, key ids and row ids, never a value or token.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import psycopg
from psycopg import sql

from fetch_etl.logins.masking import PII_FIELDS, PiiField, SivMasker, TokenError, decode_siv_token, token_mode
from fetch_etl.warehouse import locks
from fetch_etl.warehouse.key_registry import retire_mask_key
from fetch_etl.warehouse.schema import migrate

log = logging.getLogger(__name__)
audit_log = logging.getLogger("fetch_etl.audit")
audit_log.setLevel(logging.INFO)  # an audit line is not optional: a quieter root logger must not drop it

HMAC_REVEAL_REFUSAL = (
    "reveal needs PII_MASKING_MODE=siv: in hmac mode the tokens are HMAC-SHA256 digests, which are one-way, "
    "so not even the key can turn them back into IP addresses or device ids"
)
HMAC_ROTATE_REFUSAL = (
    "rotate-key needs PII_MASKING_MODE=siv: hmac tokens cannot be re-keyed, because that would need the "
    "original values, which are never stored; to change an hmac key, run with the new key and keep both tokens "
    "for an overlap window (docs/pii.md, 'Changing an hmac key')"
)
ROTATED_TABLES = ("user_logins", "user_logins_rejected")
DEFAULT_PAGE_SIZE = 5_000  # rows per page (--batch-size)
_CACHE_LIMIT = 200_000


class PiiAdminError(RuntimeError):
    """The operation cannot go ahead; one sentence for the operator, never a value, token or key."""


def require_siv(mode: str, refusal: str) -> None:
    """Refuse, with the sentence that explains why, unless the configured mode is `siv`."""
    if mode == "siv":
        return
    if mode == "hmac":
        raise PiiAdminError(refusal)
    raise PiiAdminError(f"unknown PII_MASKING_MODE {mode!r}; expected hmac or siv")


# --- reveal ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevealedToken:
    token: str
    field: PiiField
    value: str


@dataclass(frozen=True)
class RevealedRow:
    message_id: str | None
    user_id: str | None
    create_date: date | None
    ip: str | None
    device_id: str | None


@dataclass(frozen=True)
class RowSelector:
    """Which `user_logins` rows to reveal; the conditions are ANDed."""

    user_id: str | None = None
    masked_ip: str | None = None
    limit: int = 100

    def describe(self) -> str:
        """For the audit line: the user id (stored in clear anyway) and the kinds of filter, never a token."""
        parts = [f"user_id={self.user_id}"] if self.user_id is not None else []
        if self.masked_ip is not None:
            parts.append("masked_ip=<token>")
        return f"rows({', '.join(parts)}; limit {self.limit})"


def reveal_tokens(masker: SivMasker, tokens: Sequence[str], field: PiiField | None = None) -> list[RevealedToken]:
    """Each token's clear value. Without `field`, the column a token is bound to is found by trying both."""
    fields = (field,) if field else PII_FIELDS
    revealed: list[RevealedToken] = []
    for number, token in enumerate(tokens, 1):
        try:
            decode_siv_token(token)  # a malformed or hmac token gets its own explanation
        except TokenError as err:
            raise TokenError(f"token {number} of {len(tokens)}: {err}") from None
        for candidate in fields:
            try:
                revealed.append(RevealedToken(token, candidate, masker.reveal(token, candidate)))
                break
            except TokenError:
                continue
        else:
            column = "" if field else " or device_id"
            raise TokenError(
                f"token {number} of {len(tokens)} does not decrypt as {fields[0]}{column} with key {masker.key_id}: "
                "it was made with another key, belongs to another column, or was altered"
            )
    return revealed


def select_rows(conn: psycopg.Connection, selector: RowSelector) -> list[tuple]:
    """(message_id, user_id, create_date, masked_ip, masked_device_id, mask_key_id) of the selected rows."""
    conditions: list[sql.Composable] = []
    params: list[object] = []
    if selector.user_id is not None:
        conditions.append(sql.SQL("user_id = %s"))
        params.append(selector.user_id)
    if selector.masked_ip is not None:
        conditions.append(sql.SQL("masked_ip = %s"))
        params.append(selector.masked_ip)
    if not conditions:
        raise PiiAdminError("choose rows with --user-id and/or --where-masked-ip, or give tokens")
    query = sql.SQL(
        "SELECT message_id, user_id, create_date, masked_ip, masked_device_id, mask_key_id FROM user_logins "
        "WHERE {} ORDER BY create_date, message_id LIMIT %s"
    ).format(sql.SQL(" AND ").join(conditions))
    return conn.execute(query, [*params, selector.limit]).fetchall()


def reveal_rows(masker: SivMasker, rows: Sequence[tuple]) -> list[RevealedRow]:
    """Clear ip/device_id of selected rows; every row must have been masked with this masker's key."""
    other_keys = Counter(row[5] for row in rows if row[5] != masker.key_id and (row[3] or row[4]))
    if other_keys:
        keys = ", ".join(f"{key or 'none recorded'} ({n})" for key, n in sorted(other_keys.items(), key=str))
        raise PiiAdminError(
            f"{sum(other_keys.values())} of the {len(rows)} selected rows were masked with another key than "
            f"{masker.key_id}: {keys}; reveal them with that key, or finish the rotation first"
        )
    revealed: list[RevealedRow] = []
    for message_id, user_id, create_date, masked_ip, masked_device_id, _ in rows:
        try:
            ip = masker.reveal(masked_ip, "ip") if masked_ip else None
            device_id = masker.reveal(masked_device_id, "device_id") if masked_device_id else None
        except TokenError as err:
            raise TokenError(f"user_logins row {message_id}: {err}") from None
        revealed.append(RevealedRow(message_id, user_id, create_date, ip, device_id))
    return revealed


@dataclass
class RevealAudit:
    """What one `reveal` call did, for its single audit line."""

    selector: str
    mode: str
    database: str
    key_id: str | None = None
    rows: int = 0
    values: int = 0
    outcome: str = "failed"

    def line(self, who: str, when: datetime) -> str:
        return (
            f"AUDIT reveal by os-user {who} at {when.isoformat(timespec='seconds')}: outcome={self.outcome} "
            f"values={self.values} rows={self.rows} selector={self.selector} mode={self.mode} "
            f"key_id={self.key_id or '-'} {self.database}"
        ).rstrip()


def os_user() -> str:
    """Who ran the command, as the operating system knows them."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def reveal(
    *,
    mode: str,
    key: Callable[[], bytes],
    database_url: str,
    tokens: Sequence[str] = (),
    selector: RowSelector | None = None,
    field: PiiField | None = None,
    audit_file: str | None = None,
) -> list[RevealedToken] | list[RevealedRow]:
    """Decrypt tokens given, or the tokens of selected rows; always writes exactly one audit line."""
    from fetch_etl.warehouse.resource import PostgresResource  # imports Dagster: only when used, not for --help

    postgres = PostgresResource(database_url=database_url)
    audit = RevealAudit(
        selector=f"tokens({len(tokens)})" if tokens else (selector or RowSelector()).describe(),
        mode=mode,
        database="" if tokens else f"on {postgres.describe()}",
    )
    try:
        try:
            require_siv(mode, HMAC_REVEAL_REFUSAL)
        except PiiAdminError:
            audit.outcome = "refused (hmac is one-way)" if mode == "hmac" else "refused (unknown mode)"
            raise
        masker = SivMasker(key())
        audit.key_id = masker.key_id
        if tokens:
            result: list[RevealedToken] | list[RevealedRow] = reveal_tokens(masker, tokens, field)
            audit.values = len(result)
        else:
            with postgres.connect() as conn:
                rows = select_rows(conn, selector or RowSelector())
            audit.rows = len(rows)
            result = reveal_rows(masker, rows)
            audit.values = sum((row.ip is not None) + (row.device_id is not None) for row in result)
        audit.outcome = "ok"
        return result
    except Exception as err:
        if audit.outcome == "failed":
            audit.outcome = f"failed ({type(err).__name__})"
        raise
    finally:
        line = audit.line(os_user(), datetime.now(UTC))
        audit_log.info(line)
        if audit_file:
            with open(audit_file, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


# --- rotate-key -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationProgress:
    """Reported after each committed page."""

    table: str
    page: int
    rekeyed: int
    last_message_id: str


@dataclass
class RotationResult:
    old_key_id: str
    new_key_id: str
    rekeyed: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    hmac_rows: dict[str, int] = field(default_factory=dict)
    # After the run: rows holding tokens on any key but the new one, by key id (None: not recorded).
    left_on_other_keys: dict[str, dict[str | None, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not any(self.left_on_other_keys.values())


def _rekeyed(old: SivMasker, new: SivMasker, token: str | None, field_: PiiField, cache: dict[str, str]) -> str | None:
    if token is None:
        return None
    hit = cache.get(token)
    if hit is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        hit = cache[token] = new.mask(old.reveal(token, field_), field_)
    return hit


def _rotate_table(
    conn: psycopg.Connection,
    table: str,
    old: SivMasker,
    new: SivMasker,
    page_size: int,
    result: RotationResult,
    on_page: Callable[[RotationProgress], None] | None,
) -> None:
    """Keyset pages over message_id (unique, never updated), each page re-keyed in its own transaction."""
    name = sql.Identifier(table)
    select = sql.SQL(
        "SELECT message_id, masked_ip, masked_device_id FROM {} WHERE mask_key_id = %s AND message_id > %s "
        "ORDER BY message_id LIMIT %s FOR UPDATE"
    ).format(name)
    update = sql.SQL(
        "UPDATE {} AS t SET masked_ip = v.masked_ip, masked_device_id = v.masked_device_id, mask_key_id = %s "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(message_id, masked_ip, masked_device_id) "
        "WHERE t.message_id = v.message_id AND t.mask_key_id = %s"
    ).format(name)
    caches: dict[PiiField, dict[str, str]] = {"ip": {}, "device_id": {}}
    last, rekeyed, hmac_rows, page = "", 0, 0, 0
    started = time.perf_counter()
    while True:
        with conn.transaction():
            rows = conn.execute(select, (old.key_id, last, page_size)).fetchall()
            if not rows:
                break
            ids: list[str] = []
            ips: list[str | None] = []
            devices: list[str | None] = []
            for message_id, masked_ip, masked_device_id in rows:
                if "hmac" in (token_mode(masked_ip or ""), token_mode(masked_device_id or "")):
                    hmac_rows += 1  # loaded in hmac mode under the same key: cannot be re-keyed
                    continue
                try:
                    ips.append(_rekeyed(old, new, masked_ip, "ip", caches["ip"]))
                    devices.append(_rekeyed(old, new, masked_device_id, "device_id", caches["device_id"]))
                except TokenError as err:
                    raise PiiAdminError(
                        f"{table} row {message_id}: {err}; the {rekeyed} rows re-keyed before it stay re-keyed, "
                        "so fix or remove that row and run rotate-key again"
                    ) from None
                ids.append(message_id)
            if ids:
                conn.execute(update, (new.key_id, ids, ips, devices, old.key_id))
        last = rows[-1][0]
        rekeyed += len(ids)
        page += 1
        result.pages += 1
        elapsed = time.perf_counter() - started
        log.info("%s: re-keyed %d rows so far (page %d, %.0f rows/s)", table, rekeyed, page, rekeyed / elapsed)
        if on_page is not None:
            on_page(RotationProgress(table, page, rekeyed, last))
    result.rekeyed[table] = rekeyed
    result.hmac_rows[table] = hmac_rows


def _left_on_other_keys(conn: psycopg.Connection, table: str, key_id: str) -> dict[str | None, int]:
    query = sql.SQL(
        "SELECT mask_key_id, count(*) FROM {} WHERE mask_key_id IS DISTINCT FROM %s "
        "AND (masked_ip IS NOT NULL OR masked_device_id IS NOT NULL) GROUP BY mask_key_id"
    ).format(sql.Identifier(table))
    return dict(conn.execute(query, (key_id,)).fetchall())


def rotate_key(
    conn: psycopg.Connection,
    old: SivMasker,
    new: SivMasker,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: Callable[[RotationProgress], None] | None = None,
) -> RotationResult:
    """Re-encrypt every siv token on the old key with the new one, a committed page at a time; rerun to resume.

    Rows already on the new key are skipped (their mask_key_id says so), so a run that stopped half-way
    is finished by running it again. `conn` must be in autocommit mode (each page is its own transaction).
    """
    if old.key_id == new.key_id:
        raise PiiAdminError(f"the old and the new key are the same key (id {new.key_id}); nothing to rotate")
    migrate(conn)  # the rejects' token columns may not exist yet
    if not locks.try_acquire(conn, locks.AdvisoryLock.ROTATION):
        holder = "; ".join(h.describe() for h in locks.holders(conn, locks.AdvisoryLock.ROTATION))
        raise PiiAdminError(f"another rotate-key is running on this database ({holder}); wait for it to finish")
    result = RotationResult(old.key_id, new.key_id)
    started = time.perf_counter()
    try:
        for table in ROTATED_TABLES:
            _rotate_table(conn, table, old, new, page_size, result, on_page)
        result.left_on_other_keys = {table: _left_on_other_keys(conn, table, new.key_id) for table in ROTATED_TABLES}
        if result.complete:
            retire_mask_key(conn, old.key_id, new.key_id, new.mode)
    finally:
        locks.release(conn, locks.AdvisoryLock.ROTATION)
    result.seconds = time.perf_counter() - started
    return result
