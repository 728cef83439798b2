#!/bin/sh
# TEST SCAFFOLDING: the entrypoint of the postgres:17-bookworm stand-in (Debian's PostgreSQL 15). Like the
# real image's: on an empty $PGDATA it runs initdb (UTF8), sets POSTGRES_USER's password, creates
# POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sql, then runs postgres as PID 1 listening on all
# addresses of the container (Compose publishes it on 127.0.0.1 only).
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?the postgres stand-in needs POSTGRES_PASSWORD}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb -D "$PGDATA" -E UTF8 --locale=C.UTF-8 -U "$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=md5 >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 md5" >>"$PGDATA/pg_hba.conf"
    # First-start initialisation on the socket only: health checks over TCP fail until it is done.
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        as_postgres psql -v ON_ERROR_STOP=1 -qU "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for script in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$script" ] || continue
        echo "postgres stand-in: running $script"
        as_postgres psql -v ON_ERROR_STOP=1 -qU "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$script"
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres stand-in: initialised $PGDATA (UTF8)"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*'
