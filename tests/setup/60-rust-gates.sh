# Sourced by tests/run-all: the tools of the workspace gates (tests/suites/gates.sh), built from crates.io into
# $MCP_AUTHZ_CACHE/tools once and reused (each install is skipped while the pinned version is there).
#   cargo-fuzz 0.13.2, cargo-deny 0.20.2 (their own --locked dependency trees); rustfmt and clippy of the
#   stable toolchain; a nightly toolchain for cargo-fuzz (the machine image has one: toolchains cannot be
#   downloaded here, so a missing one is an error that says so).
_mcp_authz_tools="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}/tools"
mkdir -p "$_mcp_authz_tools/bin"
case ":$PATH:" in *":$_mcp_authz_tools/bin:"*) ;; *) export PATH="$_mcp_authz_tools/bin:$PATH" ;; esac
_mcp_authz_install() { # crate version binary
  if [ "$("$_mcp_authz_tools/bin/$3" --version 2>/dev/null | awk '{print $NF}')" != "$2" ]; then
    echo "installing $1 $2 into $_mcp_authz_tools"
    # Its own target directory: a tool's build must not evict the workspace's cached one.
    CARGO_TARGET_DIR="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}/target-tools" \
      cargo install "$1" --version "$2" --locked --quiet --root "$_mcp_authz_tools" || return 1
  fi
}
# Fuzzing runs in the gates unless MCP_AUTHZ_FUZZ_SECONDS=0; only then are cargo-fuzz and nightly not needed.
if [ "${MCP_AUTHZ_FUZZ_SECONDS:-20}" -gt 0 ]; then
  _mcp_authz_install cargo-fuzz 0.13.2 cargo-fuzz || return 1
fi
_mcp_authz_install cargo-deny 0.20.2 cargo-deny || return 1
for _mcp_authz_component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$_mcp_authz_component" \
    || rustup component add "$_mcp_authz_component" || return 1
done
if [ "${MCP_AUTHZ_FUZZ_SECONDS:-20}" -gt 0 ]; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "no nightly toolchain: cargo-fuzz needs one (rustup toolchain install nightly)" >&2
    return 1
  fi
  echo "gates: $(cargo-fuzz --version), $(rustup run nightly rustc --version)"
fi
echo "gates: $(cargo-deny --version)"
unset _mcp_authz_tools _mcp_authz_component
unset -f _mcp_authz_install
