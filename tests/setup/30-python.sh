# Sourced by tests/run-all (and examples/quickstart/run): one shared Python virtual environment at
# $REPO/.venv (git-ignored) with the pins of tests/requirements.txt. Idempotent: it reinstalls only when
# the requirements file changed since the last install.
#   MCP_AUTHZ_PYTHON  the venv's python
_mcp_authz_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_mcp_authz_venv="$_mcp_authz_repo/.venv"
_mcp_authz_reqs="$_mcp_authz_repo/tests/requirements.txt"
if [ ! -x "$_mcp_authz_venv/bin/python" ]; then
  python3 -m venv "$_mcp_authz_venv"
fi
_mcp_authz_stamp="$_mcp_authz_venv/.requirements.sha256"
_mcp_authz_want="$(sha256sum "$_mcp_authz_reqs" | cut -d' ' -f1)"
if [ "$(cat "$_mcp_authz_stamp" 2>/dev/null)" != "$_mcp_authz_want" ]; then
  "$_mcp_authz_venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_mcp_authz_reqs" || return 1
  echo "$_mcp_authz_want" > "$_mcp_authz_stamp"
fi
export MCP_AUTHZ_PYTHON="$_mcp_authz_venv/bin/python"
echo "python venv: $MCP_AUTHZ_PYTHON ($("$MCP_AUTHZ_PYTHON" -c 'import mcp, importlib.metadata as m; print("mcp", m.version("mcp"))'))"
unset _mcp_authz_repo _mcp_authz_venv _mcp_authz_reqs _mcp_authz_stamp _mcp_authz_want
