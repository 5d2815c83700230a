#!/usr/bin/env bash
# A private PostgreSQL server for mneme's `--journal postgres`, its tests and CI.
#
#   scripts/start-postgres.sh [DIR]            start (or find running) the server kept in DIR
#   scripts/start-postgres.sh --stop [DIR]     stop it (fast shutdown)
#   scripts/start-postgres.sh --kill [DIR]     stop it at once, as a crash would (immediate)
#   scripts/start-postgres.sh --status [DIR]   exit 0 when it runs
#
# DIR defaults to $MNEME_PG_DIR, else /tmp/mneme-postgres. The first run installs
# PostgreSQL from Debian's packages if it is missing (apt-get: root or sudo), creates
# a cluster in DIR (initdb, data checksums on) and starts it on a free port of
# 127.0.0.1; every run prints the URL of its database `mneme` on stdout, e.g.
#
#   postgres://mneme@127.0.0.1:39112/mneme
#
# and nothing else (progress goes to stderr). Idempotent: a running server is
# reused, a stopped one started again on the port it had. Safe to run from many
# processes at once (a lock serialises them).
#
# The server refuses to run as root: run as root, this script runs initdb and
# pg_ctl as the `postgres` user the package creates, in a directory it owns.
# Authentication: the superuser `mneme` is trusted on 127.0.0.1 (a test and
# development server: do not expose it); every other role needs its password
# (scram-sha-256). fsync stays on: durability is what the journal is for.
set -euo pipefail

action=start
case "${1:-}" in
    --stop) action=stop; shift ;;
    --kill) action=kill; shift ;;
    --status) action=status; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
esac
DIR=${1:-${MNEME_PG_DIR:-/tmp/mneme-postgres}}
DATA=$DIR/data
log() { echo "start-postgres: $*" >&2; }

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
        return 1
    fi
    echo "$bin"
}

install_postgres() {
    log "PostgreSQL is not installed: installing Debian's postgresql package"
    # No default cluster: this script makes its own.
    as_root mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.d/mneme.conf >/dev/null
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y -q postgresql >&2; then
        as_root apt-get update -q >&2
        as_root apt-get install -y -q postgresql >&2
    fi
}

# Run a PostgreSQL program as the cluster's owner.
as_owner() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

BIN=$(pg_bin) || { install_postgres; BIN=$(pg_bin); }

mkdir -p "$DIR"
if [[ $(id -u) == 0 ]]; then
    chown postgres: "$DIR"
    chmod 700 "$DIR"
    if ! runuser -u postgres -- test -w "$DIR"; then
        log "the postgres user cannot reach $DIR (a parent directory is closed to it): choose another DIR"
        exit 1
    fi
fi
# One run at a time per directory (tests start it from many processes at once).
exec 9>"$DIR/.lock"
flock 9

running() {
    [[ -f "$DATA/postmaster.pid" ]] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

case $action in
    status) running; exit ;;
    stop|kill)
        if running; then
            mode=fast
            [[ $action == kill ]] && mode=immediate
            as_owner "$BIN/pg_ctl" -D "$DATA" -m "$mode" -w stop >&2
        fi
        exit 0 ;;
esac

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [[ ! -f "$DATA/PG_VERSION" ]]; then
    rm -rf "$DATA"
    log "creating a cluster in $DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U mneme -A trust -E UTF8 --locale=C --data-checksums >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
    port=
    for _ in $(seq 1 200); do
        candidate=$((20000 + RANDOM % 20000))
        if ! port_in_use "$candidate"; then port=$candidate; break; fi
    done
    [[ -n "$port" ]] || { log "no free port found"; exit 1; }
    cat >"$DIR/hba.conf.new" <<EOF
# mneme's private server: the superuser mneme is trusted on loopback, every
# other role needs its password.
local all mneme              trust
host  all mneme 127.0.0.1/32 trust
host  all all   127.0.0.1/32 scram-sha-256
EOF
    as_owner cp "$DIR/hba.conf.new" "$DATA/pg_hba.conf"
    rm "$DIR/hba.conf.new"
    cat >"$DIR/conf.new" <<EOF

# scripts/start-postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR'
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
max_wal_size = 2GB
logging_collector = off
log_min_messages = warning
EOF
    as_owner sh -c "cat '$DIR/conf.new' >> '$DATA/postgresql.conf'"
    rm "$DIR/conf.new"
fi

port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$DATA/postgresql.conf" | tail -1)
if ! running; then
    if port_in_use "$port"; then
        log "port $port of the cluster in $DATA is taken by another process"
        exit 1
    fi
    log "starting PostgreSQL on 127.0.0.1:$port"
    # The server must not inherit the lock (fd 9): it would hold it for good.
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 start >/dev/null 9>&- \
        || { tail -20 "$DIR/server.log" >&2; exit 1; }
fi
if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U mneme -d postgres -Atqc \
        "SELECT 1 FROM pg_database WHERE datname = 'mneme'" | grep -q 1; then
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U mneme mneme
fi
echo "postgres://mneme@127.0.0.1:$port/mneme"
