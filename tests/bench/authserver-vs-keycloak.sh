#!/usr/bin/env bash
# mcp-authz's authorization server against Keycloak on one machine (issue 15). Not part of tests/run-all.
#
#   tests/bench/authserver-vs-keycloak.sh [seconds per run] [rounds] [connections]     # defaults: 10 3 16
#
# Every server is pinned to core 0 with taskset (PostgreSQL too, when it is the store: the whole server side on one
# core), the load (authserver/examples/tokenload.rs) to core 1. Measured, per round, in turn:
#   mcp-sqlite   mcp-authz on SQLite
#   mcp-pg       mcp-authz on PostgreSQL (a cluster of this script's own, fsync on)
#   mcp-pg2      two mcp-authz replicas on that PostgreSQL, the connections spread over both
#   kc-jwt       Keycloak, client authenticated with a signed JWT (client-jwt, ES256)
#   kc-basic     Keycloak, client_secret_basic
# each for `client_credentials` tokens (a fresh ES256 assertion per request where the client signs one) and for
# introspection of those tokens, client-authenticated the same way (mcp-authz: private_key_jwt only; it has no
# shared client secrets). Tokens are ES256 everywhere. Printed: each run's rate, the server side's CPU per
# operation and the load average, then the medians and mcp-authz's ratios to Keycloak's best.
#
# Keycloak (Maven Central's org.keycloak:keycloak-quarkus-dist, `start-dev`, Java 21+) is installed into
# $MCP_AUTHZ_CACHE by `mvn dependency:copy`, configured through its admin API, and warmed up before the first
# round (KC_WARMUP seconds per client and endpoint, 60 by default): a JIT-compiled server on one core takes a
# while to reach its pace. BENCH_BUILD=0 uses the release binaries already in $CARGO_TARGET_DIR; SYSTEMS picks
# a subset (e.g. SYSTEMS="mcp-sqlite kc-basic").
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
SECS="${1:-10}"
ROUNDS="${2:-3}"
CONNS="${3:-16}"
KC_WARMUP="${KC_WARMUP:-60}"
KC_VERSION="${KC_VERSION:-26.7.3}"
SYSTEMS="${SYSTEMS:-mcp-sqlite mcp-pg mcp-pg2 kc-jwt kc-basic}"
export MCP_AUTHZ_CACHE="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MCP_AUTHZ_CACHE/target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
if [ -z "${JAVA_HOME:-}" ] || [ ! -x "$JAVA_HOME/bin/java" ]; then
  for jdk in /usr/lib/jvm/temurin-2[1-9]* /usr/lib/jvm/java-2[1-9]*; do [ -x "$jdk/bin/java" ] && JAVA_HOME="$jdk"; done
fi
export JAVA_HOME="${JAVA_HOME:-}"
[ -x "$JAVA_HOME/bin/java" ] || { echo "Keycloak needs Java 21 or newer in /usr/lib/jvm (JAVA_HOME)"; exit 1; }

work="$(mktemp -d /tmp/authserver-bench.XXXXXX)"
started_pids=()
pg_ctl_stop=""
cleanup() {
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "$pg_ctl_stop" ] && eval "$pg_ctl_stop" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, seconds
  for _ in $(seq 1 $(($2 * 4))); do curl -s -o /dev/null "$1" && return 0; sleep 0.25; done
  echo "nothing answered at $1"; return 1
}

if [ "${BENCH_BUILD:-1}" = 1 ]; then
  echo "== build (release)"
  nice cargo build --release --locked -p mcp-authz-authserver --bin mcp-authz-server --example tokenload 2>&1 | tail -n 2
fi
server="$CARGO_TARGET_DIR/release/mcp-authz-server"
load="$CARGO_TARGET_DIR/release/examples/tokenload"

echo "== keys"
"$load" keys "$work/client"
jwk="$(cat "$work/client/client.jwk.json")"
resource="https://mcp.example.com/files"

# --- mcp-authz ---------------------------------------------------------------------------------------------
# The rate limits are checked on every request but set above the load of one client from one address, so the
# figures include what they cost.
mcp_config() { # dir port storage-json [selfManaged] [keys dir name] [issuer port]
  mkdir -p "$1"
  printf 'load-admin-token-0123456789' >"$1/admin"
  cat >"$1/server.json" <<EOF
{"issuer": "http://127.0.0.1:${6:-$2}", "listen": "127.0.0.1:$2", "adminListen": "127.0.0.1:0",
 "storage": $3, "signing": {"keysDir": "$work/keys-${5:-$(basename "$1")}", "selfManaged": ${4:-true}},
 "scopes": [{"value": "files:read", "description": "Read"}],
 "resources": [{"resource": "$resource", "displayName": "Files", "scopes": ["files:read"]}],
 "clients": [{"clientId": "svc", "clientName": "Service", "tokenEndpointAuthMethod": "private_key_jwt",
              "jwks": {"keys": [$jwk]}, "grantTypes": ["client_credentials"], "scopes": ["files:read"],
              "introspection": true}],
 "login": {"static": {"users": []}}, "admin": {"tokenFile": "$1/admin"},
 "rateLimits": {"tokenPerClient": {"requestsPerSecond": 1000000, "burst": 1000000},
                "tokenPerAddress": {"requestsPerSecond": 1000000, "burst": 1000000}}}
EOF
}
mcp_start() { # dir port -> pid in $started
  taskset -c 0 "$server" --config "$1/server.json" >/dev/null 2>"$1/server.log" &
  started=$!
  started_pids+=("$started")
  wait_http "http://127.0.0.1:$2/.well-known/oauth-authorization-server" 30 || { tail -n 20 "$1/server.log"; exit 1; }
}

declare -A urls pids_of aud_of
if [[ " $SYSTEMS " == *" mcp-sqlite "* ]]; then
  port="$(free_port)"
  mcp_config "$work/sqlite" "$port" "{\"sqlite\": {\"path\": \"$work/sqlite/as.db\"}}"
  mcp_start "$work/sqlite" "$port"
  urls[mcp-sqlite]="--url http://127.0.0.1:$port"
  pids_of[mcp-sqlite]="$started"
  aud_of[mcp-sqlite]="http://127.0.0.1:$port"
fi

if [[ " $SYSTEMS " == *" mcp-pg"* ]]; then
  echo "== PostgreSQL (its own cluster, fsync on, pinned to core 0)"
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$pg_bin" ]; then
    { apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; }
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  if [ "$(id -u)" = 0 ]; then pg_as="runuser -u postgres --"; else pg_as=""; fi
  pg_dir="$work/pg"; mkdir -p "$pg_dir"; [ "$(id -u)" = 0 ] && chown postgres "$pg_dir" && chmod 755 "$work"
  pg_port="$(free_port)"
  $pg_as "$pg_bin/initdb" -D "$pg_dir/data" -U mcp --auth=trust -E UTF8 >"$pg_dir/initdb.log" 2>&1
  taskset -c 0 $pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 30 \
    -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
  pg_ctl_stop="$pg_as $pg_bin/pg_ctl -D $pg_dir/data -m fast stop"
  pg_master="$(head -n 1 "$pg_dir/data/postmaster.pid")"
  for db in single replicas; do "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U mcp -d postgres -c "CREATE DATABASE $db"; done
  # The server side's CPU: the postmaster and every process it started (backends, writer, WAL writer).
  pg_pids() { echo "$pg_master $(pgrep -P "$pg_master" | tr '\n' ' ')"; }
fi
if [[ " $SYSTEMS " == *" mcp-pg "* ]]; then
  port="$(free_port)"
  printf 'postgres://mcp@127.0.0.1:%s/single' "$pg_port" >"$work/pg-single.url"
  mcp_config "$work/pg1" "$port" "{\"postgres\": {\"urlFile\": \"$work/pg-single.url\", \"maxConnections\": 8}}"
  mcp_start "$work/pg1" "$port"
  urls[mcp-pg]="--url http://127.0.0.1:$port"
  pids_of[mcp-pg]="$started"
  aud_of[mcp-pg]="http://127.0.0.1:$port"
fi
if [[ " $SYSTEMS " == *" mcp-pg2 "* ]]; then
  # One issuer behind both replicas (as behind a Service): the first writes the signing keys, the second reads them.
  port_a="$(free_port)"; port_b="$(free_port)"
  printf 'postgres://mcp@127.0.0.1:%s/replicas' "$pg_port" >"$work/pg-replicas.url"
  storage="{\"postgres\": {\"urlFile\": \"$work/pg-replicas.url\", \"maxConnections\": 8}}"
  mcp_config "$work/pga" "$port_a" "$storage" true
  mcp_start "$work/pga" "$port_a"; pid_a="$started"
  mcp_config "$work/pgb" "$port_b" "$storage" false pga "$port_a"
  mcp_start "$work/pgb" "$port_b"; pid_b="$started"
  urls[mcp-pg2]="--url http://127.0.0.1:$port_a --url http://127.0.0.1:$port_b"
  pids_of[mcp-pg2]="$pid_a $pid_b"
  aud_of[mcp-pg2]="http://127.0.0.1:$port_a"
fi

# --- Keycloak ----------------------------------------------------------------------------------------------
if [[ " $SYSTEMS " == *" kc-"* ]]; then
  kc_home="$MCP_AUTHZ_CACHE/keycloak-$KC_VERSION"
  if [ ! -x "$kc_home/bin/kc.sh" ]; then
    echo "== installing Keycloak $KC_VERSION from Maven Central"
    mvn -q -B dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KC_VERSION:tar.gz" \
      -DoutputDirectory="$work/kc-dist"
    mkdir -p "$kc_home.tmp" && tar -xzf "$work/kc-dist/keycloak-quarkus-dist-$KC_VERSION.tar.gz" -C "$kc_home.tmp" --strip-components=1
    mv "$kc_home.tmp" "$kc_home"
  fi
  kc_port="$(free_port)"; kc_mgmt="$(free_port)"
  rm -rf "$kc_home/data/h2"   # a fresh dev database each run
  echo "== Keycloak $KC_VERSION start-dev on core 0 (port $kc_port)"
  KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=admin \
    taskset -c 0 "$kc_home/bin/kc.sh" start-dev --http-host=127.0.0.1 --http-port="$kc_port" \
    --http-management-port="$kc_mgmt" >"$work/keycloak.log" 2>&1 &
  kc_sh=$!
  started_pids+=("$kc_sh")
  wait_http "http://127.0.0.1:$kc_port/realms/master" 300 || { tail -n 30 "$work/keycloak.log"; exit 1; }
  # kc.sh runs java as its child, or becomes java (exec) after a re-augmentation.
  kc_java="$(pgrep -P "$kc_sh" java || echo "$kc_sh")"
  started_pids+=("$kc_java")
  kc="http://127.0.0.1:$kc_port"
  admin_token="$(curl -sf -d grant_type=password -d client_id=admin-cli -d username=admin -d password=admin \
    "$kc/realms/master/protocol/openid-connect/token" | jq -r .access_token)"
  kc_api() { curl -sf -H "authorization: Bearer $admin_token" -H 'content-type: application/json' "$@"; }
  kc_api -d '{"realm": "bench", "enabled": true, "defaultSignatureAlgorithm": "ES256", "accessTokenLifespan": 3600}' \
    "$kc/admin/realms"
  jwks_string="$(jq -c -n --argjson k "$jwk" '{keys: [$k]}')"
  # Keycloak 26.7 introspects a token only for a client in its audience: each client puts itself there.
  kc_client() { # client-id authenticator attributes-json
    jq -n --arg id "$1" --arg auth "$2" --argjson attrs "$3" '{clientId: $id, enabled: true, publicClient: false,
      serviceAccountsEnabled: true, standardFlowEnabled: false, directAccessGrantsEnabled: false,
      clientAuthenticatorType: $auth, secret: "bench-secret-0123456789",
      attributes: ($attrs + {"access.token.signed.response.alg": "ES256"}),
      protocolMappers: [{name: "self-audience", protocol: "openid-connect", protocolMapper: "oidc-audience-mapper",
        config: {"included.client.audience": $id, "access.token.claim": "true", "introspection.token.claim": "true"}}]}'
  }
  kc_api -d "$(kc_client svc-basic client-secret '{}')" "$kc/admin/realms/bench/clients"
  kc_api -d "$(kc_client svc-jwt client-jwt "$(jq -n --arg jwks "$jwks_string" '{"use.jwks.string": "true",
    "jwks.string": $jwks, "use.jwks.url": "false", "token.endpoint.auth.signing.alg": "ES256"}')")" \
    "$kc/admin/realms/bench/clients"
  kc_issuer="$kc/realms/bench"
  kc_common="--url $kc --token-path /realms/bench/protocol/openid-connect/token --introspect-path /realms/bench/protocol/openid-connect/token/introspect --aud $kc_issuer"
  urls[kc-jwt]="$kc_common --auth jwt --client-id svc-jwt --key $work/client"
  urls[kc-basic]="$kc_common --auth basic --client-id svc-basic --secret bench-secret-0123456789"
  pids_of[kc-jwt]="$kc_java"; pids_of[kc-basic]="$kc_java"
fi

args_of() { # system mode
  case "$1" in
    mcp-*) echo "${urls[$1]} --auth jwt --client-id svc --key $work/client --aud ${aud_of[$1]} --resource $resource" ;;
    *) echo "${urls[$1]}" ;;
  esac
}
pids_csv() { # system
  local p="${pids_of[$1]}"
  [[ "$1" == mcp-pg* ]] && p="$p $(pg_pids)"
  echo "$p" | tr -s ' ' ',' | sed 's/^,//; s/,$//'
}
measure() { # system mode seconds warmup
  taskset -c 1 "$load" run $(args_of "$1") --mode "$2" --seconds "$3" --warmup "$4" \
    --connections "$CONNS" --pids "$(pids_csv "$1")"
}

echo "== warm-up"
for system in $SYSTEMS; do
  for mode in token introspect; do
    case "$system" in
      # In runs of 10 s: Keycloak refuses an assertion signed more than a minute before it arrives, and each run's
      # assertions are signed before it starts.
      kc-*) for _ in $(seq 1 $(( (KC_WARMUP + 9) / 10 ))); do
              echo "$system $mode: $(measure "$system" "$mode" 10 0 2>&1 | tail -n 1)"
            done ;;
      *) echo "$system $mode: $(measure "$system" "$mode" 1 3 2>&1 | tail -n 1)" ;;
    esac
  done
done

results="$work/results"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for mode in token introspect; do
    for system in $SYSTEMS; do
      line="$(measure "$system" "$mode" "$SECS" 0 2>&1 | tail -n 1)"
      echo "$system $line"
      # Only a run whose every answer was right gives a figure.
      case "$line" in "$mode "*) echo "$system $mode $(echo "$line" | awk '{print $2, $6}')" >>"$results" ;; esac
    done
  done
done

echo "== medians ($ROUNDS rounds of $SECS s, $CONNS connections; load average now $(cut -d' ' -f1-3 /proc/loadavg))"
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
table = {}
for system, mode, rate, cpu in rows:
    table.setdefault((system, mode), []).append((float(rate), float(cpu)))
systems = list(dict.fromkeys(r[0] for r in rows))
print(f"{'':12} {'tokens/s':>10} {'µs CPU/token':>13} {'introspections/s':>17} {'µs CPU/introspection':>21}")
med = {}
for s in systems:
    cells = []
    for mode in ("token", "introspect"):
        runs = table.get((s, mode), [])
        rate = statistics.median(r for r, _ in runs) if runs else float("nan")
        cpu = statistics.median(c for _, c in runs) if runs else float("nan")
        med[(s, mode)] = (rate, cpu)
        cells += [rate, cpu]
    print(f"{s:12} {cells[0]:>10.0f} {cells[1]:>13.1f} {cells[2]:>17.0f} {cells[3]:>21.1f}")
for mode in ("token", "introspect"):
    kc = [(med[(s, mode)][0], s) for s in systems if s.startswith("kc-")]
    if not kc:
        continue
    best, best_name = max(kc)
    for s in systems:
        if s.startswith("mcp-"):
            print(f"{mode}: {s} / {best_name} (Keycloak's best) = {med[(s, mode)][0] / best:.2f}x rate, "
                  f"{med[(best_name, mode)][1] / med[(s, mode)][1]:.2f}x less CPU per operation")
EOF
