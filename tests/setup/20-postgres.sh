# Sourced by tests/run-all: a throwaway PostgreSQL cluster on loopback for the authserver store tests
# (Debian's `postgresql` package; installed when missing). Idempotent: an initialised cluster is reused and a
# running server is left running.
#   MCP_AUTHZ_TEST_PG_URL      admin URL of the server (tests create their own databases in it)
#   MCP_AUTHZ_TEST_PG_RESTART  a shell command that stops and starts the server (restart-mid-flow tests)
_pg_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The port follows the checkout, so two clones on one machine (a CI clone beside a working tree) never collide.
_pg_port="${MCP_AUTHZ_TEST_PG_PORT:-$((55000 + $(printf '%s' "$_pg_repo" | cksum | cut -d' ' -f1) % 4000))}"
# Outside the checkout: the server runs as the `postgres` user when we are root, and a clone under /root is not
# reachable by it.
_pg_dir="${MCP_AUTHZ_TEST_PG_DIR:-/var/tmp/mcp-authz-postgres-$_pg_port}"
_pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$_pg_bin" ] || [ ! -x "$_pg_bin/pg_ctl" ]; then
  echo "installing PostgreSQL (Debian postgresql)"
  { apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; } || return 1
  _pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
# PostgreSQL refuses to run as root: run it as the package's `postgres` user then.
if [ "$(id -u)" = 0 ]; then _pg_as="runuser -u postgres --"; else _pg_as=""; fi
mkdir -p "$_pg_dir"
[ "$(id -u)" = 0 ] && chown postgres "$_pg_dir"
if [ ! -f "$_pg_dir/data/PG_VERSION" ]; then
  $_pg_as "$_pg_bin/initdb" -D "$_pg_dir/data" -U mcp --auth=trust --no-sync -E UTF8 >"$_pg_dir/initdb.log" 2>&1 || {
    cat "$_pg_dir/initdb.log"; return 1; }
fi
_pg_opts="-p $_pg_port -k $_pg_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
export MCP_AUTHZ_TEST_PG_RESTART="$_pg_as $_pg_bin/pg_ctl -D $_pg_dir/data -l $_pg_dir/server.log -w -t 30 -o '$_pg_opts' restart"
if ! $_pg_as "$_pg_bin/pg_ctl" -D "$_pg_dir/data" status >/dev/null 2>&1; then
  $_pg_as "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/server.log" -w -t 30 -o "$_pg_opts" start >/dev/null || {
    tail -n 20 "$_pg_dir/server.log"; return 1; }
fi
export MCP_AUTHZ_TEST_PG_URL="postgres://mcp@127.0.0.1:$_pg_port/postgres"
echo "postgres: $MCP_AUTHZ_TEST_PG_URL ($("$_pg_bin/postgres" --version))"
unset _pg_repo _pg_port _pg_dir _pg_bin _pg_as _pg_opts
