"""`mcp-authz local` itself: manifest edits take effect without a restart, and a bad manifest is reported with
its file, object and field."""

from __future__ import annotations

import subprocess
import time

import anyio
from flows import INITIALIZE, grant, mcp_post

CALL_WHOAMI = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


async def call_whoami(url: str, token: str) -> int:
    init = await mcp_post(url, token, INITIALIZE)
    assert init.status_code == 200, init.text
    session = init.headers.get("mcp-session-id")
    await mcp_post(url, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    return (await mcp_post(url, token, CALL_WHOAMI, session)).status_code


def test_editing_a_manifest_takes_effect_without_a_restart(plane, cimd_host, manifests_dir):
    url = plane.service("notes")["url"]
    g = anyio.run(grant, plane.ready["issuer"], url, "notes:read", cimd_host, "/agents/editor.json")
    token = g.token["access_token"]
    assert anyio.run(call_whoami, url, token) == 200
    service = manifests_dir / "notes-service.yaml"
    original = service.read_text()
    pid = plane.child.process.pid
    stricter = original.replace('names: ["list_notes", "read_note", "whoami"]', 'names: ["list_notes", "read_note"]')
    stricter = stricter.replace('names: ["add_note", "delete_note"]', 'names: ["add_note", "delete_note", "whoami"]')
    assert stricter != original
    try:
        before = plane.ready_file.stat().st_mtime
        time.sleep(0.05)
        service.write_text(stricter)
        plane.wait_for_ready_change(before)
        deadline = time.monotonic() + 10
        status = anyio.run(call_whoami, url, token)
        while status != 403 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = anyio.run(call_whoami, url, token)
        assert status == 403, "whoami now needs notes:write, which this token lacks"
        assert plane.child.process.pid == pid, "the plane must not have restarted"
    finally:
        before = plane.ready_file.stat().st_mtime
        time.sleep(0.05)
        service.write_text(original)
        plane.wait_for_ready_change(before)


def test_a_bad_manifest_is_reported_with_file_object_and_field(binary, tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "broken.yaml").write_text(
        "apiVersion: mcp-authz.io/v1alpha1\nkind: MCPService\nmetadata: {name: broken}\n"
        "spec:\n  selector: {app: x}\n  resourceUrl: https://mcp.example.com/x\n"
        "  authorizationServerRef: {name: a}\n  upstream: {port: seventy}\n"
    )
    run = subprocess.run(
        [str(binary), "local", "-f", str(manifests), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    assert f"{manifests / 'broken.yaml'}: MCPService/broken: spec.upstream.port: invalid type" in run.stderr, run.stderr


def test_a_manifest_breaking_a_cel_rule_is_refused_like_the_api_server_would(binary, tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "server.yaml").write_text(
        "apiVersion: mcp-authz.io/v1alpha1\nkind: AuthorizationServer\nmetadata: {name: a}\n"
        "spec:\n  issuer: https://auth.example.com\n  replicas: 2\n"
        "  login: {staticUsers: {name: users, key: users.yaml}}\n"
    )
    run = subprocess.run(
        [str(binary), "local", "-f", str(manifests), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    assert f"{manifests / 'server.yaml'}: AuthorizationServer/a: spec.replicas: embedded storage" in run.stderr, run.stderr


def test_a_bad_edit_while_running_is_reported_and_the_running_config_stays(plane, cimd_host, manifests_dir):
    url = plane.service("notes")["url"]
    g = anyio.run(grant, plane.ready["issuer"], url, "notes:read", cimd_host, "/agents/bad-edit.json")
    broken = manifests_dir / "zz-broken.yaml"
    log = plane.child.log
    offset = log.stat().st_size
    try:
        broken.write_text("apiVersion: mcp-authz.io/v1alpha1\nkind: MCPScope\nmetadata: {name: bad}\nspec: {value: offline_access, description: x}\n")
        deadline = time.monotonic() + 15
        said = ""
        while "manifests changed but were refused" not in said and time.monotonic() < deadline:
            time.sleep(0.2)
            said = log.read_text(errors="replace")[offset:]
        assert f"{broken}: MCPScope/bad: spec.value: offline_access is reserved for refresh tokens" in said, said
        assert anyio.run(call_whoami, url, g.token["access_token"]) == 200, "the running config must stay in force"
    finally:
        broken.unlink(missing_ok=True)
