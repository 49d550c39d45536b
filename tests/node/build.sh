#!/usr/bin/env bash
# Puts a real Kubernetes node into a cache directory outside the repository, keyed by the pinned versions:
#   $MCP_AUTHZ_CACHE/node/<kubernetes>-containerd<v>-runc<v>-cni<v>/
#     kubelet, kube-scheduler, kube-proxy  from k8s.io/kubernetes, pinned in ../control-plane/go.mod (the API
#                                      server's version, stamped the same way)
#     containerd, containerd-shim-runc-v2, ctr   github.com/containerd/containerd/v2
#     runc                             github.com/opencontainers/runc (cgo, with seccomp: needs libseccomp-dev)
#     cni/{bridge,host-local,loopback}    github.com/containernetworking/plugins
#     coredns                          github.com/coredns/coredns (cluster DNS, on the node's bridge address)
#     pause                            pause.c here, static (the pod sandbox; no image can be pulled)
# Everything is compiled with the machine's `go` from the Go module proxy. containerd, runc and the CNI plugins
# are built with `go install module/cmd@version`: upstream's own go.mod and go.sum, checked against the checksum
# database, exactly the dependency set their releases build with. Binaries already in the cache are not built
# again; a lock keeps two runs from building at once. Builds run under `nice` and one at a time (2-core machine).
# Prints the directory on stdout; progress and build times go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
control_plane="$here/../control-plane"
cache="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}"

containerd_version="v2.4.2"
runc_version="v1.5.3"
cni_version="v1.10.0"
coredns_version="v1.15.0"
cni_plugins=(bridge host-local loopback)

k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$control_plane/go.mod")"
[ -n "$k8s_version" ] || { echo "node/build.sh: cannot read the k8s.io/kubernetes version from $control_plane/go.mod" >&2; exit 1; }
out="$cache/node/${k8s_version}-containerd${containerd_version#v}-runc${runc_version#v}-cni${cni_version#v}-coredns${coredns_version#v}"
mkdir -p "$out/cni"

exec 9>"$out/.lock"
flock 9

log() { echo "node: $*" >&2; }

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null || { echo "node/build.sh: go is not installed (looked on PATH and in /usr/local/go/bin)" >&2; exit 1; }

# As ../control-plane/build.sh does: stamp the release version, which `go build` of a module leaves empty.
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

k8s_build() { # name package
  local name="$1" package="$2"
  [ -x "$out/$name" ] && return
  log "building $name from $package $k8s_version (the first build takes minutes)"
  local started=$SECONDS
  (cd "$control_plane" && nice -n 10 go build -buildvcs=false -o "$out/.$name.partial" -ldflags "$k8s_ldflags" "$package")
  mv "$out/.$name.partial" "$out/$name"
  log "built $name in $((SECONDS - started)) s"
}

# go_install DEST_SUBDIR CGO TAGS LDFLAGS PACKAGE@VERSION...: installs into a scratch GOBIN, then moves the
# binaries into $out/DEST_SUBDIR.
go_install() {
  local dest="$1" cgo="$2" tags="$3" ldflags="$4"
  shift 4
  local names=() package missing=0
  for package in "$@"; do
    package="${package%@*}"
    names+=("${package##*/}")
    [ -x "$out/$dest/${package##*/}" ] || missing=1
  done
  [ "$missing" = 1 ] || return 0
  log "building ${names[*]} from $* (the first build takes minutes)"
  local started=$SECONDS scratch
  scratch="$(mktemp -d)"
  (cd "$scratch" && GOBIN="$scratch/bin" CGO_ENABLED="$cgo" GOFLAGS=-buildvcs=false \
    nice -n 10 go install -tags "$tags" -ldflags "$ldflags" "$@")
  local name
  for name in "${names[@]}"; do
    mv "$scratch/bin/$name" "$out/$dest/$name"
  done
  rm -rf "$scratch"
  log "built ${names[*]} in $((SECONDS - started)) s"
}

k8s_build kubelet k8s.io/kubernetes/cmd/kubelet
k8s_build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
k8s_build kube-proxy k8s.io/kubernetes/cmd/kube-proxy

# runc needs cgo (its nsenter is C) and, for the seccomp profiles containerd hands it, libseccomp's headers.
if [ ! -x "$out/runc" ] && ! pkg-config --exists libseccomp 2>/dev/null; then
  log "installing libseccomp-dev (Debian) for runc's seccomp support"
  { apt-get install -y -q libseccomp-dev pkg-config >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q libseccomp-dev pkg-config >/dev/null; }; } \
    || { echo "node/build.sh: cannot install libseccomp-dev" >&2; exit 1; }
fi
go_install . 1 seccomp,urfave_cli_no_docs "-s -w -X main.version=${runc_version#v}" \
  "github.com/opencontainers/runc@$runc_version"

containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"
containerd_ldflags+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
# No btrfs headers here (and no btrfs snapshotter wanted): overlayfs is the snapshotter.
go_install . 0 no_btrfs,urfave_cli_no_docs "$containerd_ldflags" \
  "github.com/containerd/containerd/v2/cmd/containerd@$containerd_version" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$containerd_version" \
  "github.com/containerd/containerd/v2/cmd/ctr@$containerd_version"

# Cluster DNS (Service names such as the authorization server's JWKS URL), run on the node's bridge address.
go_install . 0 "" "-s -w" "github.com/coredns/coredns@$coredns_version"

cni_packages=()
for plugin in "${cni_plugins[@]}"; do
  case "$plugin" in
    host-local) cni_packages+=("github.com/containernetworking/plugins/plugins/ipam/host-local@$cni_version") ;;
    *) cni_packages+=("github.com/containernetworking/plugins/plugins/main/$plugin@$cni_version") ;;
  esac
done
go_install cni 0 "" "-s -w" "${cni_packages[@]}"

# The sandbox container's program (registry.k8s.io/pause cannot be pulled here): our own, static.
if [ ! -x "$out/pause" ] || [ "$here/pause.c" -nt "$out/pause" ]; then
  gcc -O2 -static -o "$out/.pause.partial" "$here/pause.c"
  mv "$out/.pause.partial" "$out/pause"
fi

# kube-proxy's nftables mode drives the kernel through the `nft` command.
if ! command -v nft >/dev/null; then
  log "installing nftables (Debian) for kube-proxy"
  { apt-get install -y -q nftables >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q nftables >/dev/null; }; } \
    || { echo "node/build.sh: cannot install nftables" >&2; exit 1; }
fi

for binary in pause kubelet kube-scheduler kube-proxy coredns runc containerd containerd-shim-runc-v2 ctr "${cni_plugins[@]/#/cni/}"; do
  [ -x "$out/$binary" ] || { echo "node/build.sh: $out/$binary is missing after the build" >&2; exit 1; }
done
echo "$out"
