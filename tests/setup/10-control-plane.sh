# Sourced by tests/run-all: makes sure the real Kubernetes control plane binaries (kube-apiserver,
# kube-controller-manager, etcd, built from Go modules) and helm/kubectl are in the cache, and tells the
# tests where they are. Idempotent: a warm cache costs a second.
#   MCP_AUTHZ_CONTROL_PLANE_BIN  directory with etcd, kube-apiserver, kube-controller-manager, helm, kubectl
#   MCP_AUTHZ_HELM, MCP_AUTHZ_KUBECTL  the helm and kubectl binaries in it
MCP_AUTHZ_CONTROL_PLANE_BIN="$(bash "$(dirname "${BASH_SOURCE[0]}")/../control-plane/build.sh")"
export MCP_AUTHZ_CONTROL_PLANE_BIN
export MCP_AUTHZ_HELM="$MCP_AUTHZ_CONTROL_PLANE_BIN/helm"
export MCP_AUTHZ_KUBECTL="$MCP_AUTHZ_CONTROL_PLANE_BIN/kubectl"
echo "control plane binaries: $MCP_AUTHZ_CONTROL_PLANE_BIN"
