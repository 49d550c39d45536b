#!/usr/bin/env python3
"""A real grant through the cluster, from the host: the agent's Client ID Metadata Document is served over HTTPS
on the node's bridge address (so the authorization server, in its pod, fetches it), the demo person logs in and
consents on the authorization server reached through its ClusterIP, the code is exchanged, and the token is used
on the MCP pod through the sidecar the webhook injected: `initialize` and `tools/list` pass, a tool the token
does not cover (`echo` needs `notes:write`) is refused with 403. Uses the quickstart's own helpers
(examples/quickstart/mcp_authz_demo) and the official MCP SDK's types; run with the venv of tests/setup/30-python.sh.

    oauth_probe.py certificate DIR ADDRESS [NAME]...
                                             a test CA and a server certificate for ADDRESS (and the NAMEs) in DIR
                                             (ca.pem, server.pem, server-key.pem), made before the quickstart's
                                             CIMDPolicy is applied
    oauth_probe.py                           the probe; AS_URL (http://CLUSTER_IP:8080), MCP_URL (the sidecar's
                                             http://POD_IP:PORT/mcp), CIMD_ADDRESS and CIMD_PORT (where the
                                             agent's document is served: the bridge address), CERT_DIR,
                                             REFRESH_TOKEN_FILE (where the grant's refresh token is kept)
    oauth_probe.py refresh                   the kept refresh token still works (after the server's pod is
                                             re-created: the grant lives on its volume)
"""

import asyncio
import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "quickstart"))

import httpx2  # noqa: E402
from mcp_authz_demo.cimd_host import CimdHost  # noqa: E402
from mcp_authz_demo.grants import DEMO_PASSWORD, DEMO_USER, publish_agent  # noqa: E402
from mcp_authz_demo.person import HeadlessPerson  # noqa: E402
from mcp_authz_demo.tls import ServerCertificate, make_server_certificate  # noqa: E402

RESOURCE = "https://mcp.quickstart.example/mcp"
ISSUER = "https://auth.quickstart.example"


class Ingress(httpx2.AsyncBaseTransport):
    """What a cluster puts in front of the authorization server, for a client on the host: requests for the
    issuer's https origin go, TLS terminated, to the server's Service over plain HTTP; the client keeps seeing
    the issuer's URLs (cookies, redirects, forms), as it would through an Ingress."""

    def __init__(self, backend: str) -> None:
        self.backend = httpx2.URL(backend)
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.host == httpx2.URL(ISSUER).host:
            url = request.url.copy_with(scheme=self.backend.scheme, host=self.backend.host, port=self.backend.port)
            request = httpx2.Request(request.method, url, headers=request.headers, content=request.content)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def fail(message):
    sys.exit(f"oauth_probe: {message}")


async def post(url, token, body, session=None):
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["Mcp-Session-Id"] = session
    async with httpx2.AsyncClient(timeout=15.0) as http:
        return await http.post(url, json=body, headers=headers)


async def main():
    address = os.environ["CIMD_ADDRESS"]
    directory = Path(os.environ["CERT_DIR"])
    certificate = ServerCertificate(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    host = CimdHost(certificate, hostname=address, bind=address).start(int(os.environ["CIMD_PORT"]))
    path = "/agents/node-e2e.json"
    ingress = Ingress(os.environ["AS_URL"])
    try:
        client_id, redirect_uri = publish_agent(host, path)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": "notes:read",
                "resource": RESOURCE,
                "state": secrets.token_urlsafe(16),
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        person = HeadlessPerson(DEMO_USER, DEMO_PASSWORD, client=httpx2.AsyncClient(timeout=15.0, transport=ingress))
        async with person.client:
            outcome = await person.authorize(f"{ISSUER}/authorize?{query}", redirect_uri)
        if not outcome.code:
            fail(f"no code: {outcome.params}")
        async with httpx2.AsyncClient(timeout=15.0, transport=Ingress(os.environ["AS_URL"])) as http:
            response = await http.post(
                f"{ISSUER}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": outcome.code,
                    "redirect_uri": redirect_uri,
                    "client_id": client_id,
                    "code_verifier": verifier,
                    "resource": RESOURCE,
                },
            )
        if response.status_code != 200:
            fail(f"the code exchange got {response.status_code}: {response.text[:300]}")
        issued = response.json()
    finally:
        host.stop()
    if not host.fetches_of(path):
        fail("the authorization server never fetched the client's metadata document")
    if "refresh_token" in issued and os.environ.get("REFRESH_TOKEN_FILE"):
        Path(os.environ["REFRESH_TOKEN_FILE"]).write_text(json.dumps({"client_id": client_id, "refresh_token": issued["refresh_token"]}))
    token = issued["access_token"]
    mcp = os.environ["MCP_URL"]

    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "node-e2e", "version": "1"}},
    }
    response = await post(mcp, token, initialize)
    if response.status_code != 200:
        fail(f"initialize with the token got {response.status_code}: {response.text[:300]}")
    session = response.headers.get("mcp-session-id")
    await post(mcp, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    listed = await post(mcp, token, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session)
    if listed.status_code != 200:
        fail(f"tools/list with the token got {listed.status_code}: {listed.text[:300]}")
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}}}
    refused = await post(mcp, token, call, session)
    if refused.status_code != 403:
        fail(f"a tool the grant does not cover (echo needs notes:write) got {refused.status_code}, expected 403: {refused.text[:300]}")
    print(
        f"oauth_probe: document fetched, code exchanged (scope {issued.get('scope')!r}); initialize and tools/list "
        f"passed the sidecar; tools/call echo refused: {refused.headers.get('www-authenticate') or refused.text[:120]}",
        file=sys.stderr,
    )


async def refresh():
    """The grant kept earlier (REFRESH_TOKEN_FILE) still works: its refresh token is exchanged and the new access
    token passes the sidecar."""
    kept = json.loads(Path(os.environ["REFRESH_TOKEN_FILE"]).read_text())
    # A new server process fetches the client's document again: serve it at the same URL (the client_id).
    address, directory = os.environ["CIMD_ADDRESS"], Path(os.environ["CERT_DIR"])
    certificate = ServerCertificate(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    host = CimdHost(certificate, hostname=address, bind=address).start(int(os.environ["CIMD_PORT"]))
    try:
        client_id, _ = publish_agent(host, "/agents/node-e2e.json")
        if client_id != kept["client_id"]:
            fail(f"the document moved: {client_id} is not {kept['client_id']}")
        async with httpx2.AsyncClient(timeout=15.0, transport=Ingress(os.environ["AS_URL"])) as http:
            response = await http.post(
                f"{ISSUER}/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": kept["refresh_token"],
                    "client_id": kept["client_id"],
                    "resource": RESOURCE,
                },
            )
    finally:
        host.stop()
    if response.status_code != 200:
        fail(f"the kept refresh token got {response.status_code}: {response.text[:300]}")
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "node-e2e", "version": "1"}},
    }
    answer = await post(os.environ["MCP_URL"], response.json()["access_token"], initialize)
    if answer.status_code != 200:
        fail(f"initialize with the refreshed token got {answer.status_code}: {answer.text[:300]}")
    print("oauth_probe: the grant survived: refresh token exchanged, the new token passes the sidecar", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["certificate"]:
        make_server_certificate(Path(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1:2] == ["refresh"]:
        asyncio.run(refresh())
    else:
        asyncio.run(main())
