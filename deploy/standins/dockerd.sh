#!/usr/bin/env bash
# TEST SCAFFOLDING, not part of the deployment: a private Docker engine for CI on a machine without one.
#
#   eval "$(deploy/standins/dockerd.sh start)"   # starts dockerd, prints DOCKER_HOST and FETCH_ETL_DOCKERD_DIR
#   deploy/standins/dockerd.sh stop              # stops that dockerd by its PID and deletes its state
#
# All its state (data root, exec root, socket, pid file, log) lives in one fresh temporary directory; it
# touches no iptables rules and no system socket, so it never disturbs another engine on the machine.
# Needs root and Debian's docker.io (`apt-get install -y docker.io`).
set -euo pipefail

start() {
    command -v dockerd >/dev/null || { echo "needs dockerd (apt-get install -y docker.io)" >&2; exit 1; }
    local dir
    dir="$(mktemp -d /tmp/fetch-etl-dockerd.XXXXXX)"
    setsid dockerd --iptables=false --ip6tables=false \
        --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
        -H "unix://$dir/docker.sock" >"$dir/dockerd.log" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + 60))
    echo "$pid" >"$dir/started.pid"
    until DOCKER_HOST="unix://$dir/docker.sock" docker version >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "dockerd did not start; its log ($dir/dockerd.log):" >&2
            tail -20 "$dir/dockerd.log" >&2
            stop "$dir"
            exit 1
        fi
        sleep 0.5
    done
    echo "dockerd $pid ready on unix://$dir/docker.sock" >&2
    echo "export DOCKER_HOST=unix://$dir/docker.sock FETCH_ETL_DOCKERD_DIR=$dir"
}

stop() {
    local dir="${1:-${FETCH_ETL_DOCKERD_DIR:-}}"
    case "$dir" in
        /tmp/fetch-etl-dockerd.*) ;;
        *) echo "stop: not a directory this script made: '$dir'" >&2; exit 1 ;;
    esac
    [ -d "$dir" ] || return 0
    local pid
    pid="$(cat "$dir/started.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "dockerd $pid ignored SIGTERM for 30 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Whatever the engine left mounted under its own directory (never anything else), then the directory.
    awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r mount; do
        umount -l "$mount" || true
    done
    rm -rf "$dir"
    echo "dockerd ${pid:-?} stopped; $dir removed" >&2
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
