#!/usr/bin/env bash
# Install, start and stop the private PostgreSQL, Redis and image registry that the tests use.
#
#   scripts/services.sh install   apt-get install what is missing and register runsc with the engine (needs root)
#   scripts/services.sh check     list missing packages; exit 1 if any are missing
#   scripts/services.sh start     start each installed service, reusing instances that already run
#   scripts/services.sh stop      stop the instances this script started
#   scripts/services.sh status    print which instances are running
#   scripts/services.sh env       print `export COREBASE_TEST_*=...` lines for the running instances
#
# The instances are private: each has its own data, config and log under the state directory, listens
# on 127.0.0.1 only, and uses a port apart from the system-wide services (PostgreSQL 5432, Redis 6379,
# docker-registry 5000), which this script never starts or stops. One state directory per OS user lets
# every clone of the repository share one set of instances instead of fighting over the ports.
#
# Environment:
#   COREBASE_SERVICES_DIR          state directory (default /tmp/corebase-services-<uid>)
#   COREBASE_TEST_POSTGRES_PORT    PostgreSQL TCP port (default 54329)
#   COREBASE_TEST_REDIS_PORT       Redis TCP port (default 63799)
#   COREBASE_TEST_REGISTRY_PORT    registry HTTP port (default 5055)
set -euo pipefail

readonly HOST=127.0.0.1
# docker-compose only validates docker-compose.yml in the tests (`docker-compose config`); it starts nothing.
readonly PACKAGES=(postgresql redis-server docker-registry busybox-static runsc docker-compose)
# gVisor's runsc, registered with the Docker Engine for sandboxed containers. With --network=none a
# sandboxed container has only a loopback interface, so gVisor's own network stack never has to
# work with the engine's bridge networks.
readonly SANDBOX_RUNTIME=runsc
readonly SANDBOX_RUNTIME_ARGS='["--network=none"]'
readonly DOCKER_DAEMON_JSON=${COREBASE_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
readonly DATABASE=corebase_test
readonly DB_USER=corebase
readonly READY_TIMEOUT=30 # seconds to wait for a started service to accept requests

# Resolve to an absolute path without symlinks, because Redis reports its directory in that form and
# pg_ctl runs from another working directory.
STATE_DIR=$(realpath -m "${COREBASE_SERVICES_DIR:-/tmp/corebase-services-$(id -u)}")
POSTGRES_PORT=${COREBASE_TEST_POSTGRES_PORT:-54329}
REDIS_PORT=${COREBASE_TEST_REDIS_PORT:-63799}
REGISTRY_PORT=${COREBASE_TEST_REGISTRY_PORT:-5055}

# Each instance directory carries its port, so overriding a port starts a separate instance
# instead of reusing one that listens elsewhere.
PG_DIR=$STATE_DIR/postgres-$POSTGRES_PORT
PG_DATA=$PG_DIR/data
PG_SOCKET_DIR=$PG_DIR/socket
PG_LOG=$PG_DIR/postgres.log
PG_PASSWORD_FILE=$STATE_DIR/postgres-$POSTGRES_PORT.password
REDIS_DIR=$STATE_DIR/redis-$REDIS_PORT
REGISTRY_DIR=$STATE_DIR/registry-$REGISTRY_PORT

log() { printf 'services.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------------------------------------------
# Packages

package_installed() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
    [ "$status" = installed ]
}

missing_packages() {
    command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: install ${PACKAGES[*]} by hand"
    local package
    for package in "${PACKAGES[@]}"; do
        package_installed "$package" || printf '%s\n' "$package"
    done
}

cmd_check() {
    local missing
    missing=$(missing_packages)
    if [ -n "$missing" ]; then
        printf '%s\n' "$missing"
        return 1
    fi
}

cmd_install() {
    install_packages
    register_sandbox_runtime
}

install_packages() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        log "all packages are installed: ${PACKAGES[*]}"
        return 0
    fi
    # shellcheck disable=SC2206 # package names contain no spaces or glob characters
    local packages=($missing)
    if ! is_root; then
        log "missing packages: ${packages[*]}"
        log "run as root: apt-get update && apt-get install -y ${packages[*]}"
        exit 1
    fi

    log "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${packages[@]}"
}

# Add runsc to the engine's runtimes in daemon.json, keeping every other key, and make the engine
# reload its configuration with SIGHUP. The engine is never restarted, so running containers are
# untouched. Does nothing when runsc is registered already, and only logs a hint without root.
register_sandbox_runtime() {
    local runsc_path pid
    runsc_path=$(command -v "$SANDBOX_RUNTIME" 2>/dev/null) || {
        log "$SANDBOX_RUNTIME is not installed; sandboxed containers are unavailable"
        return 0
    }
    if engine_has_runtime; then
        log "the engine already has the $SANDBOX_RUNTIME runtime"
        return 0
    fi
    if ! is_root; then
        log "run as root to register $SANDBOX_RUNTIME with the engine in $DOCKER_DAEMON_JSON"
        return 0
    fi

    python3 - "$DOCKER_DAEMON_JSON" "$SANDBOX_RUNTIME" "$runsc_path" "$SANDBOX_RUNTIME_ARGS" <<'PYTHON'
import json, os, sys
path, name, program, arguments = sys.argv[1:]
config = {}
if os.path.exists(path):
    with open(path) as handle:
        text = handle.read().strip()
    config = json.loads(text) if text else {}
runtimes = config.setdefault("runtimes", {})
runtimes.setdefault(name, {"path": program, "runtimeArgs": json.loads(arguments)})
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as handle:
    json.dump(config, handle, indent=2)
    handle.write("\n")
os.replace(path + ".tmp", path)
PYTHON

    pid=$(pidof dockerd 2>/dev/null | awk '{print $1}') || true
    if [ -z "$pid" ]; then
        log "added $SANDBOX_RUNTIME to $DOCKER_DAEMON_JSON; no dockerd process found, so it applies at the engine's next start"
        return 0
    fi
    log "added $SANDBOX_RUNTIME to $DOCKER_DAEMON_JSON; reloading dockerd (pid $pid) with SIGHUP"
    kill -HUP "$pid"
    if ! command -v docker >/dev/null 2>&1; then
        log "the docker CLI is missing, so the reload cannot be checked; 'docker info' should list $SANDBOX_RUNTIME"
        return 0
    fi
    wait_until engine_has_runtime || die "dockerd did not list the $SANDBOX_RUNTIME runtime after reloading $DOCKER_DAEMON_JSON; check the engine's log"
}

engine_has_runtime() {
    command -v docker >/dev/null 2>&1 || return 1
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -qF "\"$SANDBOX_RUNTIME\""
}

# ---------------------------------------------------------------------------------------------------
# Shared helpers

port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# Print the status code of GET http://HOST:PORT/PATH, using only bash, so it works before curl is installed.
http_status() {
    local port=$1 path=$2 status_line
    status_line=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$2" "$0" "$1" >&3
        head -n 1 <&3' "$HOST" "$port" "$path" 2>/dev/null) || return 1
    set -- $status_line
    printf '%s\n' "${2:-}"
}

# Run COMMAND until it succeeds; fail after READY_TIMEOUT seconds.
wait_until() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Succeed if PIDFILE names a live process whose command line contains PATTERN. A PID file left by a
# killed instance can name a process that reused the PID, so the command line is checked too.
pidfile_alive() {
    local pidfile=$1 pattern=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(head -n 1 "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

port_closed() { ! port_open "$1"; }
process_gone() { ! kill -0 "$1" 2>/dev/null; }

ensure_port_free() {
    local what=$1 port=$2 variable=$3
    if port_open "$port"; then
        die "$what cannot start: another process listens on $HOST:$port; stop it or set $variable to a free port"
    fi
}

ensure_state_dir() {
    mkdir -p "$STATE_DIR"
    # Another user who created this directory under /tmp first would control what is inside it.
    [ -O "$STATE_DIR" ] || die "$STATE_DIR is owned by another user; set COREBASE_SERVICES_DIR to a directory you own"
    chmod 755 "$STATE_DIR" # the postgres OS user has to reach its data directory inside
}

# Serialize start and stop, because every clone and session of this OS user shares the instances.
# The lock is on file descriptor 9. Each daemon start closes it (9>&-), because a daemon that inherited
# it would hold the lock after this script exits.
readonly LOCK_TIMEOUT=300 # seconds
lock_state_dir() {
    ensure_state_dir
    exec 9>>"$STATE_DIR/lock"
    flock -w "$LOCK_TIMEOUT" 9 ||
        die "timed out after ${LOCK_TIMEOUT}s waiting for $STATE_DIR/lock, held by another services.sh start or stop"
}

# ---------------------------------------------------------------------------------------------------
# PostgreSQL

PG_BIN=
find_postgres() {
    local initdb
    # Debian keeps the server binaries out of PATH, one directory per major version, so take the newest.
    initdb=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [ -n "$initdb" ] || initdb=$(command -v initdb 2>/dev/null) || return 1
    PG_BIN=$(dirname "$initdb")
    [ -x "$PG_BIN/pg_ctl" ] && [ -x "$PG_BIN/postgres" ]
}

# initdb and postgres exit when started as root, so root runs the cluster as the postgres OS user.
PG_OWNER=
pg_owner() {
    if [ -z "$PG_OWNER" ]; then
        if is_root; then
            id postgres >/dev/null 2>&1 || die "root cannot run PostgreSQL and there is no postgres OS user"
            PG_OWNER=postgres
        else
            PG_OWNER=$(id -un)
        fi
    fi
    printf '%s\n' "$PG_OWNER"
}

as_pg_owner() {
    if is_root; then
        (cd "$PG_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$PG_DIR" && "$@")
    fi
}

pg_running() {
    [ -f "$PG_DATA/PG_VERSION" ] && as_pg_owner "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_ready() {
    "$PG_BIN/pg_isready" -q -h "$HOST" -p "$POSTGRES_PORT" -d postgres
}

pg_psql() {
    as_pg_owner "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$POSTGRES_PORT" \
        -U "$DB_USER" -d postgres "$@"
}

init_postgres() {
    local owner password_for_initdb
    owner=$(pg_owner)
    mkdir -p "$PG_DIR"
    chown "$owner" "$PG_DIR"
    chmod 700 "$PG_DIR"

    # TCP clients log in with this generated password. The socket directory is private to the owner.
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$PG_PASSWORD_FILE")
    password_for_initdb=$PG_DIR/initdb-password
    install -m 600 -o "$owner" "$PG_PASSWORD_FILE" "$password_for_initdb"

    log "creating a PostgreSQL cluster in $PG_DATA"
    as_pg_owner "$PG_BIN/initdb" -D "$PG_DATA" -U "$DB_USER" --pwfile="$password_for_initdb" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >"$PG_DIR/initdb.log"
    rm -f "$password_for_initdb"

    # Allow only the owner's socket and IPv4 loopback with a password, because initdb's default
    # also admits ::1.
    as_pg_owner tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    # A throwaway test cluster trades crash safety for speed.
    as_pg_owner tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

# Written by scripts/services.sh for the test cluster.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

start_postgres() {
    if ! find_postgres; then
        log "PostgreSQL is not installed, so it is not started; run scripts/services.sh install as root"
        return 0
    fi
    ensure_state_dir
    pg_owner >/dev/null
    mkdir -p "$PG_DIR"

    if pg_running; then
        log "PostgreSQL is already running on $HOST:$POSTGRES_PORT"
    else
        ensure_port_free PostgreSQL "$POSTGRES_PORT" COREBASE_TEST_POSTGRES_PORT
        [ -f "$PG_DATA/PG_VERSION" ] || init_postgres
        [ -s "$PG_PASSWORD_FILE" ] || die "$PG_PASSWORD_FILE is missing; run scripts/services.sh stop, delete $PG_DIR and start again"
        as_pg_owner mkdir -p "$PG_SOCKET_DIR"
        chmod 700 "$PG_SOCKET_DIR"

        log "starting PostgreSQL on $HOST:$POSTGRES_PORT"
        # pg_ctl hands -o to a shell, hence the inner quotes around the socket path.
        as_pg_owner "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$READY_TIMEOUT" \
            -o "-c listen_addresses=$HOST -p $POSTGRES_PORT -k '$PG_SOCKET_DIR'" >/dev/null 9>&- ||
            die "PostgreSQL did not start; see $PG_LOG"
    fi
    wait_until pg_ready || die "PostgreSQL did not accept connections on $HOST:$POSTGRES_PORT within ${READY_TIMEOUT}s; see $PG_LOG"
    log "PostgreSQL is ready"

    if [ "$(pg_psql -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" != 1 ]; then
        pg_psql -c "CREATE DATABASE $DATABASE"
        log "created database $DATABASE"
    fi
}

stop_postgres() {
    find_postgres || return 0
    if ! pg_running; then
        log "PostgreSQL is not running"
        return 0
    fi
    as_pg_owner "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w >/dev/null
    log "PostgreSQL stopped"
}

postgres_url() {
    printf 'postgresql://%s:%s@%s:%s/%s\n' "$DB_USER" "$(cat "$PG_PASSWORD_FILE")" "$HOST" "$POSTGRES_PORT" "$DATABASE"
}

# ---------------------------------------------------------------------------------------------------
# Redis

redis_ready() {
    [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

# The instance on the port is this script's when its working directory is REDIS_DIR.
redis_running() {
    [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" --raw config get dir 2>/dev/null | sed -n 2p)" = "$REDIS_DIR" ]
}

start_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        log "Redis is not installed, so it is not started; run scripts/services.sh install as root"
        return 0
    fi
    ensure_state_dir
    mkdir -p "$REDIS_DIR"

    if redis_running; then
        log "Redis is already running on $HOST:$REDIS_PORT"
    else
        ensure_port_free Redis "$REDIS_PORT" COREBASE_TEST_REDIS_PORT
        log "starting Redis on $HOST:$REDIS_PORT"
        redis-server --bind "$HOST" --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
            --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" </dev/null 9>&-
    fi
    wait_until redis_ready || die "Redis did not reply to PING on $HOST:$REDIS_PORT within ${READY_TIMEOUT}s; see $REDIS_DIR/redis.log"
    log "Redis is ready"
}

stop_redis() {
    command -v redis-cli >/dev/null 2>&1 || return 0
    if ! redis_running; then
        log "Redis is not running"
        return 0
    fi
    # On success the server closes the connection without a reply, so redis-cli's exit status is not
    # checked. The wait below confirms the stop.
    redis-cli -h "$HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    wait_until port_closed "$REDIS_PORT" || die "Redis on $HOST:$REDIS_PORT did not stop within ${READY_TIMEOUT}s"
    log "Redis stopped"
}

# ---------------------------------------------------------------------------------------------------
# Image registry (Debian's docker-registry, the Distribution registry v2)

registry_ready() {
    [ "$(http_status "$REGISTRY_PORT" /v2/)" = 200 ]
}

registry_running() {
    pidfile_alive "$REGISTRY_DIR/registry.pid" "$REGISTRY_DIR/config.yml"
}

write_registry_config() {
    cat >"$REGISTRY_DIR/config.yml" <<EOF
# Written by scripts/services.sh: a registry for tests, on loopback, without auth or TLS.
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/storage
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $HOST:$REGISTRY_PORT
  headers:
    X-Content-Type-Options: [nosniff]
EOF
}

start_registry() {
    if ! command -v docker-registry >/dev/null 2>&1; then
        log "docker-registry is not installed, so it is not started; run scripts/services.sh install as root"
        return 0
    fi
    ensure_state_dir
    mkdir -p "$REGISTRY_DIR/storage"

    if registry_running; then
        log "the registry is already running on $HOST:$REGISTRY_PORT"
    else
        ensure_port_free "the registry" "$REGISTRY_PORT" COREBASE_TEST_REGISTRY_PORT
        write_registry_config
        log "starting the registry on $HOST:$REGISTRY_PORT"
        # setsid detaches it from this shell's session, so it outlives the script like the other daemons.
        setsid docker-registry serve "$REGISTRY_DIR/config.yml" \
            </dev/null >>"$REGISTRY_DIR/registry.log" 2>&1 9>&- &
        echo $! >"$REGISTRY_DIR/registry.pid"
    fi
    wait_until registry_ready ||
        die "the registry did not return 200 for GET /v2/ on $HOST:$REGISTRY_PORT within ${READY_TIMEOUT}s; see $REGISTRY_DIR/registry.log"
    log "the registry is ready"
}

stop_registry() {
    local pidfile=$REGISTRY_DIR/registry.pid pid
    if ! registry_running; then
        log "the registry is not running"
        rm -f "$pidfile"
        return 0
    fi
    pid=$(head -n 1 "$pidfile")
    kill "$pid"
    wait_until process_gone "$pid" || die "the registry (pid $pid) did not stop within ${READY_TIMEOUT}s"
    rm -f "$pidfile"
    log "the registry stopped"
}

# ---------------------------------------------------------------------------------------------------
# Commands

cmd_start() {
    lock_state_dir
    start_postgres
    start_redis
    start_registry
}

cmd_stop() {
    lock_state_dir
    stop_registry
    stop_redis
    stop_postgres
}

cmd_status() {
    local postgres=stopped redis=stopped registry=stopped
    if find_postgres && pg_running; then postgres=running; fi
    if command -v redis-cli >/dev/null 2>&1 && redis_running; then redis=running; fi
    registry_running && registry=running
    printf 'postgres  %s:%s  %s\n' "$HOST" "$POSTGRES_PORT" "$postgres"
    printf 'redis     %s:%s  %s\n' "$HOST" "$REDIS_PORT" "$redis"
    printf 'registry  %s:%s  %s\n' "$HOST" "$REGISTRY_PORT" "$registry"
}

cmd_env() {
    if find_postgres && pg_running && [ -s "$PG_PASSWORD_FILE" ]; then
        printf 'export COREBASE_TEST_POSTGRES_URL=%s\n' "$(postgres_url)"
    fi
    if command -v redis-cli >/dev/null 2>&1 && redis_running; then
        printf 'export COREBASE_TEST_REDIS_URL=redis://%s:%s/0\n' "$HOST" "$REDIS_PORT"
    fi
    if registry_running; then
        printf 'export COREBASE_TEST_REGISTRY=%s:%s\n' "$HOST" "$REGISTRY_PORT"
    fi
}

main() {
    [ $# -eq 1 ] || usage
    case $1 in
        install) cmd_install ;;
        check) cmd_check ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
