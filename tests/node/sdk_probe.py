#!/usr/bin/env python3
"""The official MCP Python SDK client from the host, through its own discovery, against the cluster on the test
node: `OAuthClientProvider` with a `client_metadata_url`, nothing but the public names.

    sdk_probe.py hosts FILE ADDRESS   writes FILE: this machine's /etc/hosts plus the quickstart's two names at
                                      ADDRESS (the node's bridge address, where the TLS front listens)
    sdk_probe.py                      the probe; run it in a mount namespace of its own where FILE is bind-mounted
                                      on /etc/hosts (e2e.sh does), with SSL_CERT_FILE the test CA

The client knows only `https://mcp.quickstart.example/mcp`. Its resolver (the hosts file) sends both names to the
front this probe runs on the bridge address, port 443: TLS with a certificate from the test CA for both names (the
CA the client trusts, as a client trusts the CA of a cluster's Ingress), then the bytes as they are to the sidecar
of the MCP pod (`mcp.`) or the authorization server's Service (`auth.`). So the SDK walks the whole flow itself:
401, protected-resource metadata from the sidecar, the issuer's metadata, its metadata document's URL as
`client_id` (served over HTTPS on the bridge address, fetched by the server in its pod), login and consent, the
token; then:

1. a tool call its first grant covers passes;
2. a step-up: a tool needing `notes:write` gets 403 `insufficient_scope`; the SDK authorizes again with the wider
   scope and the call passes;
3. a refusal: a tool no rule grants is refused (403, JSON-RPC -32003) and no new authorization is attempted;
4. a key rotation while a call streams: a long-running tool's progress arrives over SSE while the operator
   rotates the server's signing key (the active key's recorded retirement is brought forward in the keys Secret,
   the state of the rotation, as if its period had passed; the operator publishes a successor and it signs
   a token lifetime later); the stream completes, and a token the SDK refreshes afterwards, signed with the new
   key, passes the sidecar.

Env: CERT_DIR (ca.pem, server.pem, server-key.pem; the certificate names the bridge address and both names),
FRONT_ADDRESS, MCP_BACKEND and AS_BACKEND (host:port), CIMD_PORT, KUBECONFIG, MCP_AUTHZ_KUBECTL, NAMESPACE.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "quickstart"))

import anyio  # noqa: E402
import httpx2  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp_authz_demo.cimd_host import CimdHost  # noqa: E402
from mcp_authz_demo.tls import ServerCertificate  # noqa: E402
from mcp_authz_demo.walkthrough import make_agent  # noqa: E402

MCP_HOST, AUTH_HOST = "mcp.quickstart.example", "auth.quickstart.example"
RESOURCE = f"https://{MCP_HOST}/mcp"
ISSUER = f"https://{AUTH_HOST}"
SERVER = "quickstart"
# The access-token lifetime the rotation step gives the server: the lead a successor key is published before it
# signs, and how soon the SDK's token expires and is refreshed (signed with the new key).
SHORT_LIFETIME = 20


def fail(message):
    sys.exit(f"sdk_probe: {message}")


def say(line):
    print(f"sdk_probe: {line}", file=sys.stderr, flush=True)


# --- the TLS front ---------------------------------------------------------------------------------------------


async def _pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError, TimeoutError):
        # A peer gone mid-stream (or a TLS close that timed out): the other direction ends on its own.
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a broken stream
            pass


async def start_front(address, certificate, backends):
    """TLS on ADDRESS:443 for both names; the name the client asked for (SNI) picks the backend."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert_pem, certificate.key_pem)

    # A server-side SSLObject does not expose the name the client asked for: keep it from the handshake.
    def remember_name(ssl_object, name, _context):
        ssl_object.requested_name = name

    context.sni_callback = remember_name

    async def handle(client_reader, client_writer):
        name = getattr(client_writer.get_extra_info("ssl_object"), "requested_name", None)
        backend = backends.get(name)
        if backend is None:
            client_writer.close()
            return
        host, port = backend.rsplit(":", 1)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        except asyncio.CancelledError:
            # The probe is over and the loop cancels the connections the client kept open.
            pass

    return await asyncio.start_server(handle, address, 443, ssl=context)


# --- the operator's rotation -----------------------------------------------------------------------------------


def kubectl(*args, stdin=None):
    command = [os.environ["MCP_AUTHZ_KUBECTL"], "--kubeconfig", os.environ["KUBECONFIG"], "-n", os.environ["NAMESPACE"]]
    done = subprocess.run(command + list(args), input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        fail(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def key_index():
    secret = json.loads(kubectl("get", "secret", f"{SERVER}-authserver-keys", "-o", "json"))
    return secret, json.loads(base64.b64decode(secret["data"]["keys.json"]))


def bring_rotation_forward():
    """The active key retires in a few seconds, as if its rotation period had passed: the operator must publish a
    successor that signs a token lifetime later (its plan pushes the retirement back to then)."""
    secret, index = key_index()
    now = int(time.time())
    active = [k for k in index["keys"] if k["activatesAt"] <= now < k["retiresAt"]]
    if len(active) != 1:
        fail(f"expected one signing key before the rotation: {index}")
    active[0]["retiresAt"] = now + SHORT_LIFETIME // 2
    patch = {"data": {"keys.json": base64.b64encode(json.dumps(index).encode()).decode()}}
    kubectl("patch", "secret", secret["metadata"]["name"], "--type=merge", "-p", json.dumps(patch))
    return active[0]["kid"]


def jwt_kid(token):
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


async def jwks_kids():
    async with httpx2.AsyncClient(timeout=10.0) as http:
        response = await http.get(f"{ISSUER}/jwks")
    return [k["kid"] for k in response.json()["keys"]]


def text_of(result):
    return " ".join(getattr(c, "text", "") for c in result.content)


# --- the probe -------------------------------------------------------------------------------------------------


async def main():
    directory = Path(os.environ["CERT_DIR"])
    certificate = ServerCertificate(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    address = os.environ["FRONT_ADDRESS"]
    front = await start_front(
        address, certificate, {MCP_HOST: os.environ["MCP_BACKEND"], AUTH_HOST: os.environ["AS_BACKEND"]}
    )
    host = CimdHost(certificate, hostname=address, bind=address).start(int(os.environ["CIMD_PORT"]))
    path = "/agents/node-e2e-sdk.json"
    try:
        agent = make_agent(RESOURCE, host, lambda line: None, path=path)
        async with agent.session() as session:
            await probe(agent, session, host, path)
    finally:
        host.stop()
        front.close()


async def probe(agent, session, host, path):
    # The SDK found everything itself: the challenge, both metadata documents, the CIMD client id.
    discovered = [e.url for e in agent.exchanges if "/.well-known/" in e.url and e.status == 200]
    if not any(u.startswith(f"https://{MCP_HOST}/.well-known/oauth-protected-resource") for u in discovered):
        fail(f"no protected-resource metadata fetched from {MCP_HOST}: {discovered}")
    if not any(u.startswith(f"{ISSUER}/.well-known/") for u in discovered):
        fail(f"no authorization-server metadata fetched from {ISSUER}: {discovered}")
    if not host.fetches_of(path):
        fail("the authorization server never fetched the SDK client's metadata document")
    first_scope = agent.storage.tokens.scope
    say(f"discovery {discovered}; CIMD client {host.url(path)} authorized, scope {first_scope!r}")
    if "notes:write" in (first_scope or "").split():
        fail(f"the first grant already holds notes:write ({first_scope!r}): no step-up to test")

    # 1. A tool call the first grant covers.
    listed = [t.name for t in (await session.list_tools()).tools]
    result = await session.call_tool("get-sum", {"a": 2, "b": 3})
    if result.is_error or "5" not in text_of(result):
        fail(f"get-sum: {result}")
    say(f"tools/list {listed}; tools/call get-sum -> {text_of(result)!r}")

    # 2. Step-up: echo needs notes:write.
    before = len(agent.outcomes)
    result = await session.call_tool("echo", {"message": "stepped up"})
    if result.is_error or "stepped up" not in text_of(result):
        fail(f"echo after step-up: {result}")
    challenges = [e for e in agent.exchanges if e.url == RESOURCE and e.status == 403]
    if not challenges or 'error="insufficient_scope"' not in (challenges[-1].www_authenticate or ""):
        fail(f"no 403 insufficient_scope before the step-up: {[(e.status, e.www_authenticate) for e in challenges]}")
    if len(agent.outcomes) != before + 1 or "notes:write" not in agent.storage.tokens.scope.split():
        fail(f"no second authorization with notes:write (outcomes {len(agent.outcomes)}, scope {agent.storage.tokens.scope!r})")
    say(f"step-up: 403 {challenges[-1].www_authenticate!r}; authorized again, scope {agent.storage.tokens.scope!r}; echo passed")

    # 3. A refusal: no rule grants get-env (defaultDecision Deny), whatever the scope.
    before = len(agent.outcomes)
    try:
        refused = await session.call_tool("get-env", {})
    except MCPError as error:
        refused = error
    refusals = [e for e in agent.exchanges if e.url == RESOURCE and e.status == 403][len(challenges):]
    if not refusals or len(agent.outcomes) != before:
        fail(f"get-env: expected a 403 and no new authorization, got {refused!r} ({len(agent.outcomes) - before} authorizations)")
    if not isinstance(refused, MCPError) or refused.error.code != -32003:
        fail(f"get-env: expected JSON-RPC error -32003, got {refused!r}")
    say(f"refusal: get-env -> 403, {refused.error.code} {refused.error.message!r}")

    # 4. A key rotation while a call streams.
    await rotate_while_streaming(agent, session)


async def rotate_while_streaming(agent, session):
    old_kid = jwt_kid(agent.access_token)
    progress = []
    outcome = {}

    async def on_progress(value, total, message):
        progress.append((time.monotonic(), value))

    async def stream():
        outcome["result"] = await session.call_tool(
            "trigger-long-running-operation", {"duration": 60, "steps": 20}, progress_callback=on_progress
        )

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stream)
        while not progress:
            await anyio.sleep(0.2)
        retired = bring_rotation_forward()
        if retired != old_kid:
            fail(f"the SDK's token was signed by {old_kid}, the active key is {retired}")
        rotated_at = time.monotonic()
        say(f"streaming; the active key {old_kid} now retires in {SHORT_LIFETIME // 2} s")
        # The successor reaches the JWKS (operator -> Secret -> the pod's volume -> the server's reload).
        new_kid = None
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline and "result" not in outcome:
            kids = await jwks_kids()
            fresh = [k for k in kids if k != old_kid]
            if fresh:
                new_kid = fresh[0]
                break
            await anyio.sleep(1)
        if new_kid is None:
            fail(f"no successor key in the JWKS {time.monotonic() - rotated_at:.0f} s after the rotation began")
        say(f"the JWKS publishes the successor {new_kid} ({time.monotonic() - rotated_at:.0f} s), the stream is open")
    result = outcome["result"]
    during = [value for at, value in progress if at > rotated_at]
    if result.is_error or "completed" not in text_of(result) or len(progress) != 20 or not during:
        fail(f"the stream did not survive the rotation: {len(progress)} progress notifications, {result}")
    say(f"the stream completed across the rotation: {len(progress)} progress notifications, {len(during)} after it began")

    # New tokens: the SDK refreshes its expired token; once the successor signs, its token passes the sidecar.
    deadline = time.monotonic() + 120
    while True:
        result = await session.call_tool("get-sum", {"a": 40, "b": 2})
        if result.is_error or "42" not in text_of(result):
            fail(f"get-sum with token of kid {jwt_kid(agent.access_token)}: {result}")
        if jwt_kid(agent.access_token) == new_kid:
            break
        if time.monotonic() > deadline:
            fail(f"no token signed by {new_kid} within 120 s (still {jwt_kid(agent.access_token)})")
        await anyio.sleep(2)
    say(f"a token the SDK refreshed, signed by the new key {new_kid}, passes the sidecar")


def write_hosts(target, address):
    original = Path("/etc/hosts").read_text()
    Path(target).write_text(f"{original.rstrip()}\n{address} {MCP_HOST} {AUTH_HOST}\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["hosts"]:
        write_hosts(sys.argv[2], sys.argv[3])
    else:
        asyncio.run(main())
