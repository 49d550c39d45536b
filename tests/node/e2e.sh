#!/usr/bin/env bash
# End-to-end on a real node (issue 17): the chart installed with helm, the operator, the authorization servers it
# renders and an MCP pod with the sidecar its webhook injects, all running from images of the test binaries on a
# kubelet beside the test control plane; then an MCP request from the host through the injected sidecar.
#
# Needs root and the variables of tests/setup/10-control-plane.sh (and 40-node.sh for the test MCP server's
# Node 22 and npm packages). Builds what it needs (tests/node/build.sh, cargo) and leaves nothing running.
# MCP_AUTHZ_KEEP_NODE=1 keeps the node's directory (logs/, pod-logs/) after a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
: "${MCP_AUTHZ_CONTROL_PLANE_BIN:?source tests/setup/10-control-plane.sh (tests/run-all does)}"
: "${MCP_AUTHZ_NODE22:?source tests/setup/40-node.sh (tests/run-all does)}"
: "${MCP_AUTHZ_NPM_TOOLS:?source tests/setup/40-node.sh (tests/run-all does)}"
: "${MCP_AUTHZ_PYTHON:?source tests/setup/30-python.sh (tests/run-all does)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mcp-authz/target}"
kubectl_bin="$MCP_AUTHZ_CONTROL_PLANE_BIN/kubectl"
helm_bin="$MCP_AUTHZ_CONTROL_PLANE_BIN/helm"
export MCP_AUTHZ_KUBECTL="$kubectl_bin"

step() { echo "node-e2e: $*" >&2; }
# eventually SECONDS COMMAND...: runs COMMAND until it succeeds, at most SECONDS seconds (then once more, loudly).
eventually() {
  local deadline=$((SECONDS + $1))
  shift
  while [ "$SECONDS" -lt "$deadline" ]; do
    "$@" >/dev/null 2>&1 && return
    sleep 1
  done
  "$@"
}
started=$SECONDS

MCP_AUTHZ_NODE_BIN="$(bash tests/node/build.sh)"
export MCP_AUTHZ_NODE_BIN
cargo build --locked -q -p mcp-authz-operator -p mcp-authz-authserver -p mcp-authz-sidecar -p mcp-authz-tests --bins

# A run killed outright (SIGKILL) cannot remove its directory (the binaries and images, some 300 MB): the next
# run removes those whose process is gone. The node and the control plane stop by themselves when the pipes
# this script holds close.
for stale in /tmp/mcp-authz-node-e2e-*/; do
  [ -f "$stale/pid" ] && ! kill -0 "$(cat "$stale/pid")" 2>/dev/null && rm -rf "$stale"
done
work="$(mktemp -d /tmp/mcp-authz-node-e2e-XXXXXX)"
echo $$ >"$work/pid"
# Private copies: other builds sharing the target directory must not swap a binary under the test.
mkdir -p "$work/bin"
for program in mcp-authz mcp-authz-server mcp-authz-sidecar mcp-authz-control-plane; do
  cp "$CARGO_TARGET_DIR/debug/$program" "$work/bin/"
done
step "packing images"
bash tests/node/images.sh "$work/images" "$work/bin" test >/dev/null
export MCP_AUTHZ_NODE_PAUSE_IMAGE="$work/images/pause.tar"

control_plane_pid="" node_pid=""
finish() {
  local status=$?
  set +e
  if [ "$status" != 0 ] && [ -n "${kubeconfig:-}" ] && [ -n "${node_dir:-}" ]; then
    # What the cluster looked like, before the node goes.
    "$kubectl_bin" --kubeconfig "$kubeconfig" get pods,pvc,pv -A -o wide >&2
    "$kubectl_bin" --kubeconfig "$kubeconfig" get events -A --field-selector type=Warning >&2
    for log in "$node_dir"/pod-logs/*/*/*.log; do echo "== $log" >&2; tail -n 8 "$log" >&2; done
    tail -n 20 "$node_dir/logs/kubelet.log" >&2
  fi
  # Closing their stdin stops them; each takes down what it started.
  exec 4>&- 3>&-
  [ -n "$node_pid" ] && wait "$node_pid"
  [ -n "$control_plane_pid" ] && wait "$control_plane_pid"
  if [ "$status" != 0 ] && [ -d "$work" ]; then
    for log in "$work"/node.err "$work"/control-plane.err; do [ -s "$log" ] && tail -n 20 "$log" >&2; done
  fi
  rm -rf "$work"
  exit "$status"
}
trap finish EXIT
trap 'exit 1' INT TERM

step "starting the control plane"
mkfifo "$work/control-plane.in" "$work/node.in"
"$work/bin/mcp-authz-control-plane" --apiserver-arg=--bind-address=0.0.0.0 \
  --controller=endpointslice-controller --controller=persistentvolume-binder-controller \
  --controller=node-lifecycle-controller \
  <"$work/control-plane.in" >"$work/control-plane.json" 2>"$work/control-plane.err" &
control_plane_pid=$!
exec 3>"$work/control-plane.in"
for _ in $(seq 1 600); do
  [ -s "$work/control-plane.json" ] && break
  kill -0 "$control_plane_pid" 2>/dev/null || { echo "node-e2e: the control plane did not start" >&2; exit 1; }
  sleep 0.2
done
json() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/control-plane.json" "$1"; }
kubeconfig="$(json kubeconfig)"
apiserver_port="$(json server)"
apiserver_port="${apiserver_port##*:}"
kubectl() { "$kubectl_bin" --kubeconfig "$kubeconfig" "$@"; }

step "starting the node"
bash tests/node/run-node.sh --kubeconfig "$kubeconfig" --image "$work/images/mcp-authz.tar" \
  --image "$work/images/mcp-authz-server.tar" --image "$work/images/mcp-authz-sidecar.tar" \
  --image "$work/images/mcp-everything.tar" \
  <"$work/node.in" >"$work/node.out" 2>"$work/node.err" &
node_pid=$!
exec 4>"$work/node.in"
# Another run's node (another engineer's run-all, on a shared machine) is waited for without a bound of ours: the
# suite's own timeout bounds it. From the lock on, the node has 3 minutes.
until grep -qx 'locked' "$work/node.out" 2>/dev/null; do
  kill -0 "$node_pid" 2>/dev/null || { echo "node-e2e: the node did not start" >&2; exit 1; }
  sleep 1
done
for _ in $(seq 1 900); do
  grep -q '^ready ' "$work/node.out" 2>/dev/null && break
  kill -0 "$node_pid" 2>/dev/null || { echo "node-e2e: the node did not start" >&2; exit 1; }
  sleep 0.2
done
node_dir="$(awk '/^ready /{print $2}' "$work/node.out")"
[ -n "$node_dir" ] || { echo "node-e2e: the node did not get ready" >&2; exit 1; }
gateway="$(kubectl get node mcp-authz-node -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"

# Pods reach the API server as on a cluster, through the `kubernetes` Service; this control plane runs no
# endpoint reconciler, so the test says where the API server is.
kubectl apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-test-node
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: mcp-authz-tests
addressType: IPv4
endpoints:
  - addresses: ["$gateway"]
    conditions: { ready: true }
ports:
  - name: https
    port: $apiserver_port
    protocol: TCP
EOF

# Nothing provisions volumes here: one hostPath PersistentVolume per authorization server, owned by the user the
# server runs as (hostPath ignores fsGroup).
for n in 0 1; do
  mkdir -p "$node_dir/volumes/pv-$n"
  chown 65532:65532 "$node_dir/volumes/pv-$n"
  chmod 0750 "$node_dir/volumes/pv-$n"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: { name: test-node-pv-$n }
spec:
  capacity: { storage: 10Gi }
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: { path: $node_dir/volumes/pv-$n, type: Directory }
EOF
done

step "helm install"
namespace=mcp-authz
kubectl create namespace "$namespace" >/dev/null
# The chart's own AuthorizationServer signs people in from this Secret (key `users`): the quickstart's demo user.
sed 's/name: quickstart-users/name: mcp-authz-users/; s/^  users.yaml: |/  users: |/' \
  examples/quickstart/manifests/users.yaml | kubectl -n "$namespace" apply -f - >/dev/null
HELM_CONFIG_HOME="$work/helm" HELM_CACHE_HOME="$work/helm" HELM_DATA_HOME="$work/helm" \
  "$helm_bin" --kubeconfig "$kubeconfig" install mcp-authz charts/mcp-authz -n "$namespace" \
  --set image.tag=test --set image.pullPolicy=Never --wait --timeout 180s >/dev/null

step "the quickstart's manifests and a labelled MCP pod"
# The agent's metadata document is served from the host on the bridge address, over HTTPS with a throwaway CA
# that the quickstart's CIMD policy trusts through this ConfigMap (as examples/quickstart/run does on loopback);
# the policy also lets the server fetch from the pod network (the quickstart allows only 127.0.0.0/8).
# The same certificate serves the SDK client's TLS front (tests/node/sdk_probe.py) for the quickstart's two names.
"$MCP_AUTHZ_PYTHON" tests/node/oauth_probe.py certificate "$work/cimd-tls" "$gateway" mcp.quickstart.example auth.quickstart.example
kubectl -n "$namespace" create configmap quickstart-ca --from-file=ca.pem="$work/cimd-tls/ca.pem" >/dev/null
mkdir -p "$work/manifests"
cp examples/quickstart/manifests/*.yaml "$work/manifests/"
sed -i "s|^    - 127.0.0.0/8\$|    - 127.0.0.0/8\n    - ${gateway%.*}.0/24|" "$work/manifests/cimd-policy.yaml"
grep -q "${gateway%.*}.0/24" "$work/manifests/cimd-policy.yaml" || { echo "node-e2e: cannot widen the CIMD policy" >&2; exit 1; }
# The test MCP server is the reference "everything" server, not the quickstart's notes server: the rules name its
# tools (get-sum and the long-running operation with notes:read, echo with notes:write; the rest no rule grants).
sed -i 's|names: \["list_notes", "read_note", "whoami"\]|names: ["get-sum", "trigger-long-running-operation"]|; s|names: \["add_note", "delete_note"\]|names: ["echo"]|' \
  "$work/manifests/notes-service.yaml"
grep -q '"echo"' "$work/manifests/notes-service.yaml" || { echo "node-e2e: cannot rewrite the service's rules" >&2; exit 1; }
# Tokens live 20 s: the key rotation's lead (a successor is published one token lifetime before it signs) fits in
# the run, and the SDK client refreshes its token within it.
sed -i 's|accessTokenLifetime: 10m|accessTokenLifetime: 20s|' "$work/manifests/authorization-server.yaml"
grep -q 'accessTokenLifetime: 20s' "$work/manifests/authorization-server.yaml" || { echo "node-e2e: cannot shorten the token lifetime" >&2; exit 1; }
kubectl -n "$namespace" apply -f "$work/manifests/" >/dev/null
kubectl -n "$namespace" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: notes
  labels: { app: notes, mcp-authz.io/inject: enabled }
spec:
  securityContext: { runAsNonRoot: true, runAsUser: 65532, seccompProfile: { type: RuntimeDefault } }
  containers:
    - name: mcp
      image: mcp-authz.test/mcp-everything:test
      imagePullPolicy: Never
      ports: [{ containerPort: 8000 }]
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: { drop: [ALL] }
EOF
injected="$(kubectl -n "$namespace" get pod notes -o jsonpath='{.spec.initContainers[*].name}')"
[[ " $injected " == *" mcp-authz-sidecar "* ]] || { echo "node-e2e: the webhook did not inject the sidecar (init containers: $injected)" >&2; exit 1; }

step "waiting for every pod to be Running and Ready"
# The operator makes the chart's AuthorizationServer (from its defaults ConfigMap) and both servers' Deployments
# a moment after it starts: wait for them to exist, then for everything to be up.
for resource in authorizationserver/default deployment/default-authserver deployment/quickstart-authserver; do
  eventually 120 kubectl -n "$namespace" get "$resource" >/dev/null
done
kubectl -n "$namespace" wait --for=condition=Available deployment --all --timeout=180s >/dev/null
# Pods are listed again each round: a Deployment that rolls while we wait (the operator renders a server's
# config again once every object it names is in its caches) replaces a pod, and `kubectl wait pod --all` would
# wait for the replaced one until its timeout.
all_pods_ready() {
  local pods
  pods="$(kubectl -n "$namespace" get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')" || return 1
  [ -n "$pods" ] && ! grep -qv ' True$' <<<"$pods"
}
eventually 180 all_pods_ready || {
  echo "pods not all Ready after 180 s" >&2
  false
}
kubectl -n "$namespace" get pods -o wide >&2
for resource in authorizationserver/default authorizationserver/quickstart mcpservice/notes; do
  kubectl -n "$namespace" wait --for=condition=Ready "$resource" --timeout=60s >/dev/null
done

step "an MCP client from the host through the injected sidecar"
pod_ip="$(kubectl -n "$namespace" get pod notes -o jsonpath='{.status.podIP}')"
sidecar_port="$(kubectl -n "$namespace" get pod notes -o jsonpath='{.spec.initContainers[?(@.name=="mcp-authz-sidecar")].ports[?(@.name=="mcp-authz")].containerPort}')"
MCP_URL="http://$pod_ip:$sidecar_port/mcp" python3 tests/node/mcp_probe.py

step "a real grant: the document fetched from the pod, login, consent, code, the token through the sidecar"
authserver_url="http://$(kubectl -n "$namespace" get service quickstart-authserver -o jsonpath='{.spec.clusterIP}'):8080"
# The document's URL is the client's id: one port for the whole run, on the bridge address.
cimd_port="$(python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$gateway")"
oauth() {
  CERT_DIR="$work/cimd-tls" CIMD_ADDRESS="$gateway" CIMD_PORT="$cimd_port" AS_URL="$authserver_url" MCP_URL="http://$pod_ip:$sidecar_port/mcp" \
    REFRESH_TOKEN_FILE="$work/grant.json" "$MCP_AUTHZ_PYTHON" tests/node/oauth_probe.py "$@"
}
# The server learns the MCPService's resource when its re-rendered configuration reaches the pod's volume (the
# kubelet's next sync): until then it answers invalid_target.
eventually 120 oauth

step "the authorization server's pod deleted: a new one starts on the same volume, and the grant is still there"
authserver_selector="$(kubectl -n "$namespace" get deployment quickstart-authserver -o jsonpath='{.spec.selector.matchLabels}' \
  | python3 -c 'import json, sys; print(",".join(f"{k}={v}" for k, v in json.load(sys.stdin).items()))')"
# Through the Service's ClusterIP: kube-proxy follows the EndpointSlice a moment after a pod turns Ready.
jwks() {
  local url
  url="http://$(kubectl -n "$namespace" get service quickstart-authserver -o jsonpath='{.spec.clusterIP}'):8080/jwks"
  for _ in $(seq 1 60); do
    curl -fsS -m 5 "$url" 2>/dev/null && return
    sleep 0.5
  done
  curl -fsS -m 5 "$url"
}
jwks_before="$(jwks)"
volume="$(kubectl get pv -o jsonpath='{range .items[?(@.spec.claimRef.name=="quickstart-authserver")]}{.spec.hostPath.path}{end}')"
[ -n "$(ls -A "$volume")" ] || { echo "node-e2e: the authorization server wrote nothing on its volume $volume" >&2; exit 1; }
stat -c '%u' "$volume"/* | grep -qvx 65532 && { echo "node-e2e: files on the volume not owned by 65532: $(ls -ln "$volume")" >&2; exit 1; }
kubectl -n "$namespace" delete pod -l "$authserver_selector" --wait=true >/dev/null
# A replacement pod may not exist yet when the old one is gone: wait until one is there and Ready.
eventually 120 kubectl -n "$namespace" wait --for=condition=Ready pod -l "$authserver_selector" --timeout=5s >/dev/null
jwks_after="$(jwks)"
[ "$jwks_before" = "$jwks_after" ] || { echo "node-e2e: the JWKS changed across the pod's re-creation" >&2; exit 1; }
oauth refresh

step "the official MCP SDK client's own discovery from the host: a tool call, a step-up, a refusal, a key rotation while it streams"
# Its resolver sends the public names to a TLS front on the bridge address (a hosts file bind-mounted in a mount
# namespace of its own: the machine's /etc/hosts is untouched); it trusts the test CA as a client trusts an
# Ingress's.
"$MCP_AUTHZ_PYTHON" tests/node/sdk_probe.py hosts "$work/hosts" "$gateway"
as_backend="$(kubectl -n "$namespace" get service quickstart-authserver -o jsonpath='{.spec.clusterIP}'):8080"
CERT_DIR="$work/cimd-tls" FRONT_ADDRESS="$gateway" MCP_BACKEND="$pod_ip:$sidecar_port" AS_BACKEND="$as_backend" \
  CIMD_PORT="$cimd_port" KUBECONFIG="$kubeconfig" NAMESPACE="$namespace" SSL_CERT_FILE="$work/cimd-tls/ca.pem" \
  timeout 300 unshare --mount --propagation private -- sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$work/hosts" \
  "$MCP_AUTHZ_PYTHON" tests/node/sdk_probe.py

step "the audit stream: records alone on the containers' stdout, logs on stderr"
python3 tests/node/audit_probe.py "$node_dir/pod-logs" "$namespace"

step "helm upgrade: the operator rolls, the MCP pod keeps serving"
operator_pod_before="$(kubectl -n "$namespace" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].metadata.name}')"
HELM_CONFIG_HOME="$work/helm" HELM_CACHE_HOME="$work/helm" HELM_DATA_HOME="$work/helm" \
  "$helm_bin" --kubeconfig "$kubeconfig" upgrade mcp-authz charts/mcp-authz -n "$namespace" --reuse-values \
  --set operator.logLevel=debug --wait --timeout 180s >/dev/null
kubectl -n "$namespace" rollout status deployment/mcp-authz-operator --timeout=120s >/dev/null
operator_pod_after="$(kubectl -n "$namespace" get pods -l app.kubernetes.io/component=operator --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}')"
[ -n "$operator_pod_after" ] && [ "$operator_pod_after" != "$operator_pod_before" ] \
  || { echo "node-e2e: helm upgrade did not replace the operator pod ($operator_pod_before -> $operator_pod_after)" >&2; exit 1; }
kubectl -n "$namespace" get deployment mcp-authz-operator -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}' | grep -qx debug \
  || { echo "node-e2e: helm upgrade did not reach the operator's Deployment" >&2; exit 1; }
for resource in authorizationserver/default authorizationserver/quickstart mcpservice/notes; do
  eventually 60 kubectl -n "$namespace" wait --for=condition=Ready "$resource" --timeout=5s >/dev/null
done
MCP_URL="http://$pod_ip:$sidecar_port/mcp" python3 tests/node/mcp_probe.py

step "the operator down: the injected sidecar keeps serving"
kubectl -n "$namespace" scale deployment mcp-authz-operator --replicas=0 >/dev/null
kubectl -n "$namespace" wait --for=delete pod -l app.kubernetes.io/component=operator --timeout=120s >/dev/null
MCP_URL="http://$pod_ip:$sidecar_port/mcp" python3 tests/node/mcp_probe.py
kubectl -n "$namespace" wait --for=condition=Ready pod/notes --timeout=10s >/dev/null

step "passed in $((SECONDS - started)) s"
