"""`fetch-etl reveal` and `fetch-etl rotate-key`: option parsing and printing only; the logic is in pii_admin.

Keys come from files or the environment, never from the command line, where `ps` would show them.
"""

from __future__ import annotations

import logging
import os

import click
from tabulate import tabulate

from fetch_etl.logins.masking import MASKING_MODES, PII_FIELDS, MaskingKeyError, SivMasker, TokenError, load_key
from fetch_etl.ops import pii_admin
from fetch_etl.warehouse.errors import DEFAULT_DATABASE_URL, WarehouseError

log = logging.getLogger("fetch_etl")

PII_ERRORS = (MaskingKeyError, pii_admin.PiiAdminError, TokenError, WarehouseError)
MODE = click.option(
    "--mode",
    envvar="PII_MASKING_MODE",
    type=click.Choice(MASKING_MODES),
    default="hmac",
    show_default=True,
    help="The masking mode the tokens were made with. [env: PII_MASKING_MODE]",
)
DATABASE_URL = click.option(
    "--database-url", envvar="DATABASE_URL", default=DEFAULT_DATABASE_URL, help="The warehouse (DATABASE_URL)."
)
KEY_FILE = click.Path(exists=True, dir_okay=False)


@click.command()
@click.argument("tokens", nargs=-1)
@click.option("--user-id", help="Reveal the rows of this user_id.")
@click.option("--where-masked-ip", "masked_ip", metavar="TOKEN", help="Reveal the rows whose masked_ip is TOKEN.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="At most N rows.")
@click.option("--field", type=click.Choice(PII_FIELDS), help="Column the given tokens come from (default: either).")
@click.option("--key-file", envvar="PII_MASKING_KEY_FILE", type=KEY_FILE, help="Key file (else PII_MASKING_KEY).")
@click.option(
    "--audit-log",
    envvar="FETCH_ETL_AUDIT_LOG",
    type=click.Path(dir_okay=False),
    help="Also append the audit line to this file (FETCH_ETL_AUDIT_LOG).",
)
@MODE
@DATABASE_URL
@click.pass_context
def reveal(
    ctx: click.Context,
    tokens: tuple[str, ...],
    user_id: str | None,
    masked_ip: str | None,
    limit: int,
    field: str | None,
    key_file: str | None,
    audit_log: str | None,
    mode: str,
    database_url: str,
) -> None:
    """Print the clear values of siv TOKENS, or of rows of user_logins; logs one audit line, never the values."""
    if tokens and (user_id is not None or masked_ip is not None):
        raise click.UsageError("give tokens, or --user-id/--where-masked-ip, not both")
    if not tokens and user_id is None and masked_ip is None:
        raise click.UsageError("give tokens, or choose rows with --user-id and/or --where-masked-ip")
    # A key file named on the command line wins; from the environment, PII_MASKING_KEY comes first as in a run.
    explicit_file = ctx.get_parameter_source("key_file") == click.core.ParameterSource.COMMANDLINE
    key_text = None if explicit_file else os.environ.get("PII_MASKING_KEY")
    try:
        result = pii_admin.reveal(
            mode=mode,
            key=lambda: load_key(key_text, key_file),
            database_url=database_url,
            tokens=tokens,
            selector=pii_admin.RowSelector(user_id=user_id, masked_ip=masked_ip, limit=limit),
            field=field,  # type: ignore[arg-type]
            audit_file=audit_log,
        )
    except PII_ERRORS as err:
        raise click.ClickException(str(err)) from None
    if tokens:
        table = [(f"{r.token[:24]}…", r.field, r.value) for r in result]  # type: ignore[union-attr]
        click.echo(tabulate(table, headers=["token", "field", "value"], tablefmt="github"))
    else:
        headers = ["message_id", "user_id", "create_date", "ip", "device_id"]
        click.echo(tabulate([tuple(vars(r).values()) for r in result], headers=headers, tablefmt="github"))
        click.echo(f"{len(result)} rows")


@click.command("rotate-key")
@click.option("--old-key-file", envvar="PII_MASKING_OLD_KEY_FILE", type=KEY_FILE, help="The key tokens are on now.")
@click.option("--new-key-file", envvar="PII_MASKING_NEW_KEY_FILE", type=KEY_FILE, help="The key to move them to.")
@click.option(
    "--batch-size",
    "page_size",
    type=click.IntRange(1, 100_000),
    default=pii_admin.DEFAULT_PAGE_SIZE,
    show_default=True,
    help="Rows per page: each page is re-keyed and committed in its own transaction.",
)
@MODE
@DATABASE_URL
def rotate_key(
    old_key_file: str | None, new_key_file: str | None, page_size: int, mode: str, database_url: str
) -> None:
    """Re-encrypt siv tokens from the old key to the new one, a committed page at a time; rerun to resume."""
    from fetch_etl.warehouse.resource import PostgresResource  # imports Dagster: only when run, not for --help

    try:
        pii_admin.require_siv(mode, pii_admin.HMAC_ROTATE_REFUSAL)
        if not old_key_file or not new_key_file:
            raise click.UsageError("give --old-key-file and --new-key-file (or PII_MASKING_OLD/NEW_KEY_FILE)")
        old, new = SivMasker(load_key(None, old_key_file)), SivMasker(load_key(None, new_key_file))
        log.info("re-keying siv tokens from key %s to key %s", old.key_id, new.key_id)
        with PostgresResource(database_url=database_url).connect() as conn:
            result = pii_admin.rotate_key(conn, old, new, page_size=page_size)
    except PII_ERRORS as err:
        raise click.ClickException(str(err)) from None
    rows = [
        (table, result.rekeyed[table], result.hmac_rows[table], sum(result.left_on_other_keys[table].values()))
        for table in pii_admin.ROTATED_TABLES
    ]
    headers = ["table", "re-keyed now", "hmac rows (cannot re-key)", "rows not on the new key"]
    click.echo(tabulate(rows, headers=headers, tablefmt="github"))
    click.echo(f"{sum(result.rekeyed.values())} rows in {result.pages} pages, {result.seconds:.1f} s")
    if not result.complete:
        left = {t: {k or "none": n for k, n in keys.items()} for t, keys in result.left_on_other_keys.items() if keys}
        raise click.ClickException(f"rows with tokens on other keys remain (table: key id: rows): {left}")
