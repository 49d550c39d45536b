# Sourced by tests/run-all: makes sure the real Kubernetes node of tests/node/ (kubelet, kube-scheduler,
# kube-proxy, containerd, runc, the CNI plugins, CoreDNS and the pause sandbox, built from Go modules) is in the
# cache, for tests/suites/node.sh. Idempotent: a warm cache costs a second; a fresh machine about 15 minutes
# after tests/setup/10-control-plane.sh (which fills Go's build cache with most of Kubernetes).
#   MCP_AUTHZ_NODE_BIN  the directory holding them
# The node needs root (containers, mounts, cgroups, network namespaces): without root, or with
# MCP_AUTHZ_SKIP_NODE=1, nothing is built and the suite says it did not run.
if [ "$(id -u)" = 0 ] && [ "${MCP_AUTHZ_SKIP_NODE:-0}" != 1 ]; then
  MCP_AUTHZ_NODE_BIN="$(bash "$(dirname "${BASH_SOURCE[0]}")/../node/build.sh")" || return 1
  export MCP_AUTHZ_NODE_BIN
  echo "kubernetes node binaries: $MCP_AUTHZ_NODE_BIN"
else
  echo "kubernetes node: not built (needs root; MCP_AUTHZ_SKIP_NODE=${MCP_AUTHZ_SKIP_NODE:-0})"
fi
