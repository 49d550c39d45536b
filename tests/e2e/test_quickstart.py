"""The quickstart's main job (what `examples/quickstart/run` does after building), end to end with `--once`."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_quickstart_walkthrough_prints_every_step_and_stops_cleanly(binary, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mcp_authz_demo.walkthrough", "--binary", str(binary), "--work-dir", str(tmp_path), "--once"],
        cwd=REPO / "examples" / "quickstart", capture_output=True, text=True, timeout=300,
    )
    out = run.stdout
    assert run.returncode == 0, f"{out}\n{run.stderr}"
    steps = [
        "-> 401 (no valid token)",
        "discovery: GET http://127.0.0.1:",
        "client_id_metadata_document_supported=True",
        "the authorization server fetched the client's metadata document",
        "login page (200): signing in as 'demo'",
        "consent page (200):",
        "token: POST http://127.0.0.1:",
        "tools/call list_notes -> allowed",
        "-> 403 (the token lacks a scope)",
        'error="insufficient_scope", scope="notes:write"',
        "tools/call add_note -> allowed after step-up",
        "The plane stays up. Point your own MCP client at http://127.0.0.1:",
        "stopped (mcp-authz local exited with 0)",
    ]
    positions = []
    for step in steps:
        assert step in out, f"missing step {step!r} in:\n{out}"
        positions.append(out.index(step))
    assert positions[:-2] == sorted(positions[:-2]), f"steps out of order:\n{out}"
