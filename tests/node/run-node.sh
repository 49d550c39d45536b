#!/usr/bin/env bash
# Runs one Kubernetes node on this machine beside a test control plane, until stdin closes or a signal comes,
# then takes everything down again: every process it started, every container and shim, the mounts under its
# directory and the network namespaces, the CNI bridge, kube-proxy's nftables tables and the cgroups it made.
#
#   run-node.sh --kubeconfig FILE [--name NODE] [--image OCI_TARBALL]... [--static-pod MANIFEST]...
#
# FILE must give the kubelet a client allowed to register a Node and read and write its pods (the test control
# plane's admin kubeconfig does). Needs root, the binaries of tests/node/build.sh (MCP_AUTHZ_NODE_BIN) and a
# pause image tarball (MCP_AUTHZ_NODE_PAUSE_IMAGE, made by tests/node/images.sh).
#
#   test / shell ──stdin──> run-node.sh ──> containerd (own socket, root, state; CRI; overlayfs snapshotter)
#                                 │            └─> containerd-shim-runc-v2 ──> runc ──> pod containers
#                                 ├──────> kubelet (cgroupfs driver on cgroup v1, cgroup root /mcp-authz-node-*)
#                                 ├──────> kube-proxy (nftables mode: Service ClusterIPs from pods and the host)
#                                 ├──────> coredns on 10.244.0.1:53 (cluster DNS for the pods)
#                                 └──────> kube-scheduler
#   pods: CNI bridge BRIDGE (10.244.0.1/24 on the host side), reachable from the host by pod IP.
#
# Prints `locked` on stdout once it holds the machine's node lock (one node at a time), then `ready DIR` once the
# Node is Ready; logs are in DIR/logs, container logs in DIR/pod-logs. MCP_AUTHZ_KEEP_NODE=1 keeps DIR.
set -euo pipefail

bin="${MCP_AUTHZ_NODE_BIN:?run tests/node/build.sh and export MCP_AUTHZ_NODE_BIN}"
pause_image="${MCP_AUTHZ_NODE_PAUSE_IMAGE:?export MCP_AUTHZ_NODE_PAUSE_IMAGE (tests/node/images.sh makes it)}"
kubectl="${MCP_AUTHZ_KUBECTL:?source tests/setup/10-control-plane.sh}"
kubeconfig="" node_name="mcp-authz-node" images=() static_pods=()
subnet="${MCP_AUTHZ_NODE_SUBNET:-10.244.0}"
while [ $# -gt 0 ]; do
  case "$1" in
    --kubeconfig) kubeconfig="$2"; shift 2 ;;
    --name) node_name="$2"; shift 2 ;;
    --image) images+=("$2"); shift 2 ;;
    --static-pod) static_pods+=("$2"); shift 2 ;;
    *) echo "run-node.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$kubeconfig" ] || { echo "run-node.sh: --kubeconfig is required" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run-node.sh: needs root (containers, mounts, cgroups, network namespaces)" >&2; exit 1; }

# One node on a machine at a time: they would share the pod subnet and kube-proxy's nftables tables. Another
# run's node is waited for; `locked` on stdout says this one may start (a caller bounds the start from then).
exec 8>/tmp/mcp-authz-node.lock
if ! flock -n 8; then
  echo "run-node.sh: another node runs on this machine (/tmp/mcp-authz-node.lock); waiting for it to stop" >&2
  flock 8
fi
echo locked

# A few things land outside DIR whatever the configuration: network namespaces in /run/netns (containerd's
# CRI), the shims' sockets in /run/containerd/s, CNI result caches in /var/lib/cni (libcni's cache), the
# kubelet's device-plugin socket in /var/lib/kubelet. Pods killed with the node never get their CRI
# StopPodSandbox, so cleanup removes what appeared there during the run (one node at a time: it is all ours).
listing() { find /run/netns /run/containerd /var/lib/cni /var/lib/kubelet -mindepth 1 -maxdepth 2 2>/dev/null | sort || true; }
before="$(listing)"
made_dirs=()
for path in /run/netns /run/containerd /var/lib/cni /var/lib/kubelet; do [ -e "$path" ] || made_dirs+=("$path"); done

dir="$(mktemp -d /tmp/mcp-authz-node-XXXXXX)"
id="${dir##*-}"
bridge="mcpauthz${id:0:6}"
bridge="${bridge:0:15}"
cgroup_root="/mcp-authz-node-$id"
mkdir -p "$dir"/{logs,manifests,kubelet,pod-logs,cni/net.d,cni/ipam,containerd/root,containerd/state,runc}
PATH="$bin:$PATH"
export PATH
ctr() { "$bin/ctr" --address "$dir/containerd.sock" --namespace k8s.io "$@"; }

containerd_pid="" kubelet_pid="" scheduler_pid="" proxy_pid="" dns_pid=""
cleanup() {
  set +e
  trap - EXIT INT TERM
  [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null && wait "$dns_pid" 2>/dev/null
  if [ -n "$proxy_pid" ]; then
    kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    # kube-proxy leaves its tables behind on SIGTERM; one node runs on a machine at a time, so they are ours.
    nft delete table ip kube-proxy 2>/dev/null
    nft delete table ip6 kube-proxy 2>/dev/null
  fi
  [ -n "$scheduler_pid" ] && kill "$scheduler_pid" 2>/dev/null && wait "$scheduler_pid" 2>/dev/null
  [ -n "$kubelet_pid" ] && kill "$kubelet_pid" 2>/dev/null && wait "$kubelet_pid" 2>/dev/null
  if [ -n "$containerd_pid" ]; then
    # Every container and sandbox, through containerd, so the shims and runc clean their own state.
    for task in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s KILL "$task" >/dev/null 2>&1; done
    sleep 1
    for task in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$task" >/dev/null 2>&1; done
    for container in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$container" >/dev/null 2>&1; done
    kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
  fi
  # Shims left behind (containerd gone first) still hold their containers: kill them and their children.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $dir/containerd.sock" 2>/dev/null); do
    pkill -KILL -P "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
  done
  # Mounts under the directory, deepest first (tmpfs of secrets, overlay root filesystems, netns, shm).
  grep -o " $dir[^ ]*" /proc/self/mounts | sort -r | while read -r mount; do umount -l "$mount" 2>/dev/null; done
  ip link delete "$bridge" 2>/dev/null
  comm -13 <(printf '%s\n' "$before") <(listing) | sort -r | while read -r path; do
    case "$path" in
      /run/netns/*) ip netns delete "${path#/run/netns/}" 2>/dev/null || { umount "$path"; rm -f "$path"; } ;;
      *) rm -rf "$path" ;;
    esac
  done 2>/dev/null
  for path in "${made_dirs[@]}"; do rm -rf "$path"; done
  # The pod cgroups, deepest first, in every v1 hierarchy.
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "$hierarchy$cgroup_root" ] && find "$hierarchy$cgroup_root" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  if [ -n "${MCP_AUTHZ_KEEP_NODE:-}" ]; then
    echo "run-node.sh: kept $dir" >&2
  else
    rm -rf "$dir" 2>/dev/null || echo "run-node.sh: could not remove all of $dir" >&2
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The pod cgroups hang under a root of their own, made in every mounted v1 hierarchy (the kubelet insists that
# the cgroup root exists).
for hierarchy in /sys/fs/cgroup/*/; do
  case "$hierarchy" in */unified/) continue ;; esac
  mkdir -p "$hierarchy$cgroup_root"
done
# cpuset children start empty: inherit the CPUs and memory nodes.
if [ -d /sys/fs/cgroup/cpuset ]; then
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset$cgroup_root/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset$cgroup_root/cpuset.mems"
fi

cat >"$dir/containerd.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:mcp-authz-test"
[plugins."io.containerd.cri.v1.runtime"]
  # This machine withholds CAP_SYS_RESOURCE even from root, so runc cannot lower a process's oom_score_adj
  # ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied" for the sandbox's -998): keep every
  # container at or above containerd's own score, as rootless setups do.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$bin/runc"
        Root = "$dir/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$bin/cni"]
    conf_dir = "$dir/cni/net.d"
EOF

cat >"$dir/cni/net.d/10-mcp-authz.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "mcp-authz-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "$subnet.0/24", "gateway": "$subnet.1" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF

# The bridge exists before the first pod, with the gateway address: it is the node's InternalIP (the kubelet
# refuses a --node-ip that no interface holds), reachable from pods and from the host. The CNI bridge plugin
# takes an existing bridge as it is.
ip link add "$bridge" type bridge
ip addr add "$subnet.1/24" dev "$bridge"
ip link set "$bridge" up

# Cluster DNS: CoreDNS on the bridge address (port 53 there only), answering Service and Pod names from the
# API server and forwarding the rest to the host's resolvers. Pods get it as their nameserver (clusterDNS).
cat >"$dir/Corefile" <<EOF
.:53 {
    bind $subnet.1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 5
}
EOF
"$bin/coredns" -conf "$dir/Corefile" >"$dir/logs/coredns.log" 2>&1 &
dns_pid=$!

"$bin/containerd" --config "$dir/containerd.toml" >"$dir/logs/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 1 100); do
  ctr version >/dev/null 2>&1 && break
  kill -0 "$containerd_pid" 2>/dev/null || { echo "run-node.sh: containerd exited:" >&2; tail -n 20 "$dir/logs/containerd.log" >&2; exit 1; }
  sleep 0.2
done
ctr version >/dev/null || { echo "run-node.sh: containerd did not answer" >&2; tail -n 20 "$dir/logs/containerd.log" >&2; exit 1; }

for image in "$pause_image" "${images[@]}"; do
  imported="$(ctr images import --snapshotter overlayfs "$image" 2>&1)" \
    || { echo "run-node.sh: cannot import $image: $imported" >&2; exit 1; }
done

# The kubelet's client CA for its own HTTPS endpoint: not used by the tests (authorization is AlwaysAllow on
# loopback), but the kubelet wants the field.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kubelet_port="$(free_port)"
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubernetes 1.35+ refuses cgroup v1 unless told; this machine has only v1 controllers.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix://$dir/containerd.sock
staticPodPath: $dir/manifests
podLogsDir: $dir/pod-logs
address: $subnet.1
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: false }
authorization:
  mode: AlwaysAllow
failSwapOn: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$subnet.1]
# The disk is shared with everything else on this machine, whose builds swing its free space by tens of GB
# (1 GB free was seen): the default thresholds (and even 1 %, 2.7 GB here) put DiskPressure on the node and evict
# the test's pods for others' files, and image GC would delete the imported images.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 100Mi
  imagefs.available: 100Mi
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
# ConfigMap and Secret volumes follow their objects at each pod sync: every 10 s instead of every minute, so a
# configuration the operator re-renders (a new MCPService for the authorization server) arrives in seconds.
syncFrequency: 10s
EOF

for manifest in "${static_pods[@]}"; do cp "$manifest" "$dir/manifests/"; done

"$bin/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$kubeconfig" --root-dir "$dir/kubelet" \
  --cert-dir "$dir/kubelet/pki" --hostname-override "$node_name" --node-ip "$subnet.1" -v 2 \
  >"$dir/logs/kubelet.log" 2>&1 &
kubelet_pid=$!
for _ in $(seq 1 150); do
  if "$kubectl" --kubeconfig "$kubeconfig" get node "$node_name" >/dev/null 2>&1; then break; fi
  kill -0 "$kubelet_pid" 2>/dev/null || { echo "run-node.sh: kubelet exited:" >&2; tail -n 30 "$dir/logs/kubelet.log" >&2; exit 1; }
  sleep 0.2
done
"$kubectl" --kubeconfig "$kubeconfig" get node "$node_name" >/dev/null \
  || { echo "run-node.sh: the Node did not register" >&2; tail -n 30 "$dir/logs/kubelet.log" >&2; exit 1; }
# The kubelet registers its Node with the not-ready:NoSchedule taint; on a cluster the node-lifecycle
# controller lifts it once the Node is Ready. The test control plane does not run that controller: lift it here.
"$kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready "node/$node_name" --timeout=60s >/dev/null \
  || { echo "run-node.sh: the Node did not become Ready" >&2; tail -n 30 "$dir/logs/kubelet.log" >&2; exit 1; }
"$kubectl" --kubeconfig "$kubeconfig" taint node "$node_name" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true

# Service ClusterIPs (and the API server's own `kubernetes` Service, for pods) through kube-proxy's nftables
# mode: its own `ip kube-proxy` and `ip6 kube-proxy` tables, matching only ClusterIP destinations and the
# NodePorts of the bridge address, so the host's loopback traffic is untouched. --masquerade-all makes a pod
# that reaches itself or a neighbour through a ClusterIP get the answer back through the host.
"$bin/kube-proxy" --kubeconfig "$kubeconfig" --hostname-override "$node_name" --proxy-mode nftables \
  --cluster-cidr "$subnet.0/24" --nodeport-addresses "$subnet.1/32" --masquerade-all \
  --healthz-bind-address "" --metrics-bind-address "" \
  --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 -v 1 \
  >"$dir/logs/kube-proxy.log" 2>&1 &
proxy_pid=$!
# The scheduler, so that pods created through the API (Deployments included) land on this node.
"$bin/kube-scheduler" --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" \
  --authorization-kubeconfig "$kubeconfig" --leader-elect=false --secure-port 0 -v 1 \
  >"$dir/logs/kube-scheduler.log" 2>&1 &
scheduler_pid=$!
echo "ready $dir"
# Until whoever started us closes stdin (a background job's stdin is /dev/null unless given explicitly); a
# dying kubelet, scheduler or containerd ends the node too.
cat <&0 >/dev/null &
reader=$!
while kill -0 "$reader" 2>/dev/null; do
  kill -0 "$kubelet_pid" 2>/dev/null || { echo "run-node.sh: kubelet exited" >&2; tail -n 30 "$dir/logs/kubelet.log" >&2; kill "$reader"; exit 1; }
  kill -0 "$containerd_pid" 2>/dev/null || { echo "run-node.sh: containerd exited" >&2; kill "$reader"; exit 1; }
  kill -0 "$dns_pid" 2>/dev/null || { echo "run-node.sh: coredns exited" >&2; tail -n 30 "$dir/logs/coredns.log" >&2; kill "$reader"; exit 1; }
  kill -0 "$proxy_pid" 2>/dev/null || { echo "run-node.sh: kube-proxy exited" >&2; tail -n 30 "$dir/logs/kube-proxy.log" >&2; kill "$reader"; exit 1; }
  kill -0 "$scheduler_pid" 2>/dev/null || { echo "run-node.sh: kube-scheduler exited" >&2; tail -n 30 "$dir/logs/kube-scheduler.log" >&2; kill "$reader"; exit 1; }
  sleep 1
done
