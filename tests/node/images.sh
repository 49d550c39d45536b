#!/usr/bin/env bash
# Packs the test images as OCI layout tarballs (tests/node/oci-image.py: no base image, no registry, no engine)
# into OUT_DIR, and prints OUT_DIR:
#   pause.tar        registry.k8s.io/pause:mcp-authz-test   the sandbox image containerd is configured with
#   mcp-authz.tar, mcp-authz-server.tar, mcp-authz-sidecar.tar
#                    ghcr.io/mcp-authz/<binary>:TAG, from the binaries in BINARY_DIR (a cargo target profile
#                    directory), with the production Dockerfiles' contract: /usr/local/bin/<binary> as the
#                    entrypoint, user 65532, nothing else but glibc, /etc/passwd and the CA bundle.
#
#   mcp-everything.tar  mcp-authz.test/mcp-everything:test   the reference "everything" MCP server (npm
#                    @modelcontextprotocol/server-everything, Streamable HTTP on $PORT, 8000 by default) on the
#                    Node 22 of tests/setup/40-node.sh, when MCP_AUTHZ_NODE22 and MCP_AUTHZ_NPM_TOOLS are set
#
#   images.sh OUT_DIR BINARY_DIR [TAG]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: images.sh OUT_DIR BINARY_DIR [TAG]}"
binaries="${2:?usage: images.sh OUT_DIR BINARY_DIR [TAG]}"
tag="${3:-test}"
bin="${MCP_AUTHZ_NODE_BIN:?run tests/node/build.sh and export MCP_AUTHZ_NODE_BIN}"
mkdir -p "$out"
python3 "$here/oci-image.py" --name registry.k8s.io/pause:mcp-authz-test --output "$out/pause.tar" \
  --file "$bin/pause:/pause" --entrypoint /pause --user 65535:65535
# Each image gets the environment its Dockerfile sets (`ENV NAME=VALUE` lines).
for pair in mcp-authz:operator mcp-authz-server:authserver mcp-authz-sidecar:sidecar; do
  program="${pair%%:*}" dockerfile="$here/../../${pair#*:}/Dockerfile"
  [ -x "$binaries/$program" ] || { echo "images.sh: $binaries/$program is missing (cargo build it first)" >&2; exit 1; }
  env_args=()
  while read -r setting; do env_args+=(--env "$setting"); done < <(sed -n 's/^ENV //p' "$dockerfile")
  python3 "$here/oci-image.py" --name "ghcr.io/mcp-authz/$program:$tag" --output "$out/$program.tar" \
    --file "$binaries/$program:/usr/local/bin/$program" --entrypoint "/usr/local/bin/$program" "${env_args[@]}"
done
if [ -n "${MCP_AUTHZ_NODE22:-}" ] && [ -n "${MCP_AUTHZ_NPM_TOOLS:-}" ]; then
  python3 "$here/oci-image.py" --name mcp-authz.test/mcp-everything:test --output "$out/mcp-everything.tar" \
    --file "$MCP_AUTHZ_NODE22:/usr/local/bin/node" --tree "$MCP_AUTHZ_NPM_TOOLS:/app/node_modules" --env PORT=8000 \
    --entrypoint /usr/local/bin/node \
    --entrypoint /app/node_modules/@modelcontextprotocol/server-everything/dist/index.js --entrypoint streamableHttp
fi
echo "$out"
