#!/usr/bin/env bash
# TEST SCAFFOLDING: the Compose production path, proven on stand-in images (issue 14). From the repository
# root, as root, with docker.io, docker-compose (v1, 1.29.2) and debootstrap installed and `uv` synced:
#
#   deploy/standins/compose-check.sh
#
# On a private engine (deploy/standins/dockerd.sh, stopped by PID on exit, with every container in it):
#   1. stand-ins built (build-python-base.sh, build-standins.sh), fetch-etl:local built, `up -d` with
#      .env.example and a generated key file -> every container healthy;
#   2. the sensor, unattended, loads the 100 preloaded messages (99 rows, 1 rejected and dead-lettered);
#      then, on the idle deployment, enqueue -> row visible: COMPOSE_CHECK_LATENCY_SAMPLES (default 5; 0 skips)
#      single logins, each at a random point of the sensor interval, split with dagster-postgres' run storage
#      (`compose_probe.py latency`). Printed, never judged (speed is proven in benchmarks/); a row that does
#      not appear within 120 s fails the check. COMPOSE_CHECK_LATENCY_JSON=FILE keeps every sample there;
#      COMPOSE_CHECK_LATENCY_ONLY=1 stops after this step (benchmarks/suite.py's compose-latency part);
#   3. the webserver's GraphQL lists the three assets, the checks and login_queue_sensor;
#   4. 3,000 more messages; while a run holds some, `kill user-code daemon` (no grace) then `up -d` ->
#      every message loaded exactly once within 6 minutes;
#   5. `down` then `up` keeps the run history; no clear IP or device id of the messages in a pg_dumpall of
#      either database nor in the logs of user-code, daemon and webserver.
# Prints the figures (time to healthy, time to drained, the latency, recovery time after the crash).
# docker-compose.yml runs unchanged: the host ports and the key file's path come from the environment, which
# Compose reads before .env.example.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
started=$SECONDS
probe() { uv run --quiet python deploy/standins/compose_probe.py "$@"; }
env_example() { sed -n "s/^$1=//p" .env.example | tail -1; }  # what Compose reads when the environment does not
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work="$(mktemp -d /tmp/fetch-etl-compose.XXXXXX)"
dockerd_env="$(deploy/standins/dockerd.sh start)"
eval "$dockerd_env"
compose() { docker-compose --env-file .env.example "$@"; }
cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "compose check failed; container states and log tails:" >&2
        compose ps >&2 || true
        compose logs --no-color --tail 40 >&2 || true
    fi
    compose down -v --timeout 5 >/dev/null 2>&1 || true
    deploy/standins/dockerd.sh stop "$FETCH_ETL_DOCKERD_DIR"
    rm -rf "$work"
}
trap cleanup EXIT

export COMPOSE_PROJECT_NAME=fetch-etl-ci
DAGSTER_UI_PORT="$(free_port)" WAREHOUSE_PORT="$(free_port)" LOCALSTACK_PORT="$(free_port)"
export DAGSTER_UI_PORT WAREHOUSE_PORT LOCALSTACK_PORT
export PII_MASKING_KEY_PATH="$work/pii_masking_key"
(umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' >"$PII_MASKING_KEY_PATH")
chmod 644 "$PII_MASKING_KEY_PATH"  # Compose v1 bind-mounts the secret file: the container's user reads it
sqs="http://127.0.0.1:$LOCALSTACK_PORT"
warehouse="postgresql://postgres:postgres@127.0.0.1:$WAREHOUSE_PORT/postgres"
ui="http://127.0.0.1:$DAGSTER_UI_PORT"

t=$SECONDS
deploy/standins/build-python-base.sh python:3.11-slim-bookworm
deploy/standins/build-standins.sh
echo "stand-ins: $((SECONDS - t)) s"
t=$SECONDS
docker build -q --network host -t fetch-etl:local . >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
echo "fetch-etl:local: $((SECONDS - t)) s"

wait_healthy() {  # every service's container running and healthy, within $1 seconds
    local deadline=$((SECONDS + $1)) ids states
    while :; do
        ids="$(compose ps -q)"
        states="$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' $ids 2>/dev/null || true)"
        if [ "$(echo "$ids" | grep -c .)" -eq 6 ] && ! echo "$states" | grep -qv ' running healthy$'; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "not every container healthy after $1 s:" >&2
            echo "$states" >&2
            return 1
        fi
        sleep 2
    done
}

# 1. up -d -> every container healthy
t=$SECONDS
compose up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
wait_healthy 300
healthy_s=$((SECONDS - t))
echo "1. six containers healthy ${healthy_s} s after up -d"

# 2. the sensor alone drains the preloaded queue
probe wait-loaded "$warehouse" "$sqs" preload 300 >/dev/null
drained_s=$((SECONDS - t))
echo "2. preloaded queue drained (99 loaded, 1 rejected and dead-lettered, queue empty) ${drained_s} s after up -d"

# 2. enqueue -> row visible on the idle deployment, split with Dagster's run storage (dagster-postgres is not
# published: the probe reads it at its container's address on the engine's private bridge)
latency_n="${COMPOSE_CHECK_LATENCY_SAMPLES:-5}"
latency_set="latency:$latency_n" latency_line="enqueue -> row visible in Compose: not measured"
if [ "$latency_n" -gt 0 ]; then
    latency_args=(--samples "$latency_n" --interval "${LOGIN_QUEUE_SENSOR_INTERVAL:-$(env_example LOGIN_QUEUE_SENSOR_INTERVAL)}")
    [ -z "${COMPOSE_CHECK_LATENCY_JSON:-}" ] || latency_args+=(--json "$COMPOSE_CHECK_LATENCY_JSON")
    dagster_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(compose ps -q dagster-postgres)")"
    if python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], 5432), 2).close()' "$dagster_ip" 2>/dev/null; then
        pg_user="${DAGSTER_PG_USER:-$(env_example DAGSTER_PG_USER)}" pg_db="${DAGSTER_PG_DB:-$(env_example DAGSTER_PG_DB)}"
        pg_password="${DAGSTER_PG_PASSWORD:-$(env_example DAGSTER_PG_PASSWORD)}"
        latency_args+=(--dagster-db "postgresql://$pg_user:$pg_password@$dagster_ip:5432/$pg_db")
    else
        echo "   dagster-postgres not reachable from the host: the samples are not split" >&2
    fi
    latency_out="$(probe latency "$warehouse" "$sqs" "${latency_args[@]}")"
    echo "$latency_out"
    latency_line="$(echo "$latency_out" | tail -1)"
fi
if [ "${COMPOSE_CHECK_LATENCY_ONLY:-}" = 1 ]; then
    echo "compose check stopped after the latency step (COMPOSE_CHECK_LATENCY_ONLY=1); whole check $((SECONDS - started)) s"
    exit 0
fi

# 3. the webserver's GraphQL API
probe graphql "$ui"
echo "3. webserver answers on $ui"

# 4. a crash mid-run: kill (SIGKILL, no grace) the code server, with the run in it, and the daemon
probe send-crash "$sqs"
held="$(probe wait-held "$sqs")"
t=$SECONDS
compose kill user-code daemon >/dev/null 2>&1
after_kill="$(probe queue "$sqs")"
echo "4. killed user-code and daemon while a run held messages (held: $held; right after the kill: $after_kill)"
compose up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
probe wait-loaded "$warehouse" "$sqs" "preload+$latency_set+crash" $((360 - (SECONDS - t))) >/dev/null
recovery_s=$((SECONDS - t))
echo "4. every message loaded exactly once ${recovery_s} s after the kill (limit 360 s)"
compose exec -T dagster-postgres psql -qtA -U dagster -d dagster \
    -c "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status" | tr '\n' ' ' | sed 's/^/   runs by status: /;s/$/\n/'

# 5. down then up keeps the run history; no clear value in either database or in our containers' logs
runs() { compose exec -T dagster-postgres psql -qtA -U dagster -d dagster -c "SELECT count(*) FROM runs"; }
runs_before="$(runs)"
compose logs --no-color user-code daemon webserver >"$work/logs-before-down.txt" 2>&1
compose down --timeout 30 >/dev/null 2>&1
compose up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
wait_healthy 300
runs_after="$(runs)"
[ "$runs_after" -ge "$runs_before" ] && [ "$runs_before" -gt 0 ] \
    || { echo "run history lost across down/up: $runs_before runs before, $runs_after after" >&2; exit 1; }
echo "5. down + up: $runs_after runs in Dagster's history (before: $runs_before)"
probe pii-patterns "preload+$latency_set+crash" >"$work/pii.txt"
compose exec -T postgres pg_dumpall -U postgres >"$work/warehouse.sql"
compose exec -T dagster-postgres pg_dumpall -U dagster >"$work/dagster.sql"
compose logs --no-color user-code daemon webserver >"$work/logs.txt" 2>&1
grep -q 'masked_ip' "$work/warehouse.sql" && grep -q 'ingest_logins' "$work/dagster.sql" \
    || { echo "the dumps do not hold what they should (user_logins, runs)" >&2; exit 1; }
for file in warehouse.sql dagster.sql logs-before-down.txt logs.txt; do
    if found="$(grep -owFf "$work/pii.txt" "$work/$file" | sort -u | head -3)" && [ -n "$found" ]; then
        echo "clear PII in $file: $(echo "$found" | wc -l) value(s) (not printed)" >&2
        exit 1
    fi
done
echo "5. none of $(wc -l <"$work/pii.txt") clear IPs / device ids in pg_dumpall of either database or in the logs ($(du -ch "$work"/*.sql "$work"/logs*.txt | tail -1 | cut -f1) searched)"

echo "compose check figures: healthy ${healthy_s} s, drained ${drained_s} s after up -d, recovered ${recovery_s} s after the crash; whole check $((SECONDS - started)) s"
echo "$latency_line"
