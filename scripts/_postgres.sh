# Starts a throwaway PostgreSQL server on loopback for the tests (sourced by scripts/test).
# Installs Debian's postgresql package when it is missing and we are root. On
# success exports AWSGATE_TEST_PG_URL and stops the server when the shell exits;
# otherwise says why, and the PostgreSQL tests skip with that reason.

pg_bindir() {
    local initdb
    initdb="$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)"
    [ -n "$initdb" ] && dirname "$initdb"
}

start_test_postgres() {
    if [ -n "${AWSGATE_TEST_PG_URL:-}" ]; then
        return 0
    fi
    local bindir
    if ! bindir="$(pg_bindir)"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "awsgate: installing PostgreSQL (Debian package) for the tests" >&2
            apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || true
        fi
        if ! bindir="$(pg_bindir)"; then
            echo "awsgate: PostgreSQL is not installed and cannot be installed here; its tests will skip" >&2
            return 0
        fi
    fi
    local dir port runas=()
    dir="$(mktemp -d /tmp/awsgate-pg.XXXXXX)"
    port="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$dir"
        runas=(runuser -u postgres --)
    fi
    if "${runas[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U awsgate >"$dir/initdb.log" 2>&1 &&
        "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
            -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null; then
        export AWSGATE_TEST_PG_URL="postgresql://awsgate@127.0.0.1:$port/postgres"
        AWSGATE_PG_STOP=("${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast stop)
        trap '"${AWSGATE_PG_STOP[@]}" >/dev/null 2>&1; rm -rf "'"$dir"'"' EXIT
        echo "awsgate: test PostgreSQL on 127.0.0.1:$port" >&2
    else
        echo "awsgate: could not start PostgreSQL (see $dir); its tests will skip" >&2
    fi
}
