# Shared by the scripts (test, cluster, demo, schemathesis): make sure a
# Postgres, a Redis, the tools they use and the TypeScript client's packages
# are there, starting private servers (and installing Debian's packages, as
# root) only when nothing is reachable. Never stops, flushes or reconfigures
# a server it did not start.
# Source it: it defines functions and three constants, and runs nothing.

PRIVATE_PG_PORT=55432
PRIVATE_PG_DIR=${COLLABD_TEST_PG_DIR:-/tmp/collabd-test-pg}
PRIVATE_REDIS_PORT=56379

reachable() { # host port
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_until_reachable() { # host port [what]
    for _ in $(seq 1 60); do
        reachable "$1" "$2" && return 0
        sleep 0.5
    done
    echo "${3:-a server} did not come up on $1:$2" >&2
    return 1
}

# Installs a Debian package when a command is missing, without its
# recommended packages, as root or through passwordless sudo. Nothing is
# installed, and no root is needed, when the command is there.
ensure_command() { # command package
    command -v "$1" >/dev/null 2>&1 && return 0
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            echo "$1 is not installed, and installing the Debian package $2 needs root (or passwordless sudo)" >&2
            return 1
        fi
    fi
    echo "installing $2 (for $1)" >&2
    if [ -z "${APT_LISTS_UPDATED:-}" ]; then
        ${as_root[@]+"${as_root[@]}"} apt-get update -qq >&2
        APT_LISTS_UPDATED=1
    fi
    ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$2" >&2
}

pg_bin() {
    if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
        # The server package, not just the client that may already be here.
        ensure_command /usr/lib/postgresql/none/bin/initdb postgresql
    fi
    ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1
}

start_private_postgres() {
    reachable 127.0.0.1 "$PRIVATE_PG_PORT" && return 0
    local bin owner
    bin=$(pg_bin)
    # initdb refuses to run as root: the cluster belongs to the postgres user.
    owner=$(id -un)
    if [ "$(id -u)" -eq 0 ]; then owner=postgres; fi
    if [ ! -f "$PRIVATE_PG_DIR/PG_VERSION" ]; then
        mkdir -p "$PRIVATE_PG_DIR"
        chown "$owner" "$PRIVATE_PG_DIR"
        runuser -u "$owner" -- "$bin/initdb" -D "$PRIVATE_PG_DIR" -U postgres -A trust >/dev/null
    fi
    echo "starting a private Postgres on 127.0.0.1:$PRIVATE_PG_PORT ($PRIVATE_PG_DIR)" >&2
    runuser -u "$owner" -- "$bin/pg_ctl" -D "$PRIVATE_PG_DIR" -l "$PRIVATE_PG_DIR/server.log" -w \
        -o "-p $PRIVATE_PG_PORT -h 127.0.0.1 -k $PRIVATE_PG_DIR -F" start >/dev/null
    wait_until_reachable 127.0.0.1 "$PRIVATE_PG_PORT" Postgres
}

# Prints a Postgres server URL (no database): the local one, else a private one.
postgres_server_url() { # [private: 1 skips the local server]
    if [ "${1:-0}" != 1 ] && reachable 127.0.0.1 5432; then
        echo "postgres://postgres@127.0.0.1:5432"
    else
        start_private_postgres
        echo "postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT"
    fi
}

# Prints a Redis URL: the local one, else a private one.
redis_server_url() { # [private: 1 skips the local server]
    ensure_command redis-server redis-server
    if [ "${1:-0}" != 1 ] && reachable 127.0.0.1 6379; then
        echo "redis://127.0.0.1:6379/0"
    else
        if ! reachable 127.0.0.1 "$PRIVATE_REDIS_PORT"; then
            echo "starting a private Redis on 127.0.0.1:$PRIVATE_REDIS_PORT" >&2
            redis-server --daemonize yes --port "$PRIVATE_REDIS_PORT" --bind 127.0.0.1 \
                --save '' --appendonly no --logfile /tmp/collabd-test-redis.log >/dev/null
            wait_until_reachable 127.0.0.1 "$PRIVATE_REDIS_PORT" Redis
        fi
        echo "redis://127.0.0.1:$PRIVATE_REDIS_PORT/0"
    fi
}

client_packages() { # the TypeScript client's packages, from its lockfile
    # Installed when missing, and again whenever the lockfile changed since.
    (
        cd clients/typescript
        if [ ! -f node_modules/.package-lock.json ] \
            || [ package-lock.json -nt node_modules/.package-lock.json ]; then
            npm ci --no-audit --no-fund --loglevel=error
        fi
    )
}

# A Redis Cluster of three masters and three replicas from redis-server
# processes on 127.0.0.1, ports $2..$2+5, with its files in $1. Each node's
# bus is its port + 10000; keep both below the ephemeral range (32768 on
# Linux), where an outgoing connection may hold the port. Reused when it is
# already up and healthy; otherwise whatever of it is left in $1 is stopped
# and a fresh one started, joined and waited for. Nothing is left running
# when it fails.
start_redis_cluster() { # dir base_port
    local dir=$1 base=$2 i port
    ensure_command redis-server redis-server
    ensure_command redis-cli redis-tools
    if redis_cluster_ok "$base"; then return 0; fi
    stop_redis_cluster "$dir"
    mkdir -p "$dir"
    rm -f "$dir"/nodes-*.conf
    for i in 0 1 2 3 4 5; do
        port=$((base + i))
        if reachable 127.0.0.1 "$port"; then
            echo "cannot start a Redis Cluster node on 127.0.0.1:$port: the port is taken" >&2
            stop_redis_cluster "$dir"
            return 1
        fi
        (redis_cluster_node "$dir" "$port" --daemonize yes --pidfile "$dir/redis-$port.pid" \
            --logfile "$dir/redis-$port.log") >/dev/null || {
            stop_redis_cluster "$dir"
            return 1
        }
    done
    echo "creating a Redis Cluster on 127.0.0.1:$base-$((base + 5)) ($dir)" >&2
    if ! create_redis_cluster "$dir" "$base"; then
        stop_redis_cluster "$dir"
        return 1
    fi
}

# One cluster node, in the foreground (it replaces the calling shell), with
# any further redis-server arguments. A replica fails over whatever its
# data's age: a test cluster may lose a master right after it was made.
redis_cluster_node() { # dir port [redis-server arguments...]
    local dir=$1 port=$2
    shift 2
    exec redis-server --port "$port" --bind 127.0.0.1 \
        --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
        --cluster-node-timeout 2000 --cluster-replica-validity-factor 0 \
        --save '' --appendonly no --dir "$dir" "$@"
}

# Joins six fresh nodes on base_port..+5 into three masters with a replica
# each, and waits until the cluster is healthy.
create_redis_cluster() { # dir base_port
    local dir=$1 base=$2 i nodes=()
    for i in 0 1 2 3 4 5; do
        wait_until_reachable 127.0.0.1 "$((base + i))" "Redis Cluster node" || return 1
        nodes+=("127.0.0.1:$((base + i))")
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
        tail -n 5 "$dir/create.log" >&2
        return 1
    }
    for _ in $(seq 1 120); do
        redis_cluster_ok "$base" && return 0
        sleep 0.25
    done
    echo "the Redis Cluster on 127.0.0.1:$base did not become healthy" >&2
    return 1
}

# True when every node of the cluster at base_port answers and agrees the
# cluster is ok, with three masters, and every replica has its master's data
# (so a master lost from now on can fail over).
redis_cluster_ok() { # base_port
    local i port info
    for i in 0 1 2 3 4 5; do
        port=$(($1 + i))
        reachable 127.0.0.1 "$port" || return 1
        info=$(redis-cli -p "$port" cluster info 2>/dev/null)
        grep -q '^cluster_state:ok' <<<"$info" || return 1
        grep -q '^cluster_size:3' <<<"$info" || return 1
        info=$(redis-cli -p "$port" info replication 2>/dev/null)
        if grep -q '^role:slave' <<<"$info"; then
            grep -q '^master_link_status:up' <<<"$info" || return 1
        fi
    done
}

# The REDIS_URL of the cluster at base_port, fred's cluster form.
redis_cluster_url() { # base_port
    echo "redis-cluster://127.0.0.1:$1?node=127.0.0.1:$(($1 + 1))&node=127.0.0.1:$(($1 + 2))"
}

# Stops the nodes started in dir (by their pid files) and waits until each
# has exited, so their ports are free when this returns. A pid file whose
# process is gone, or is no longer a redis-server, is only removed.
stop_redis_cluster() { # dir
    local pidfile pid
    for pidfile in "$1"/redis-*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        rm -f "$pidfile"
        [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = redis-server ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
