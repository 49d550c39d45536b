"""Dynamic Client Registration with the official MCP Python SDK: a client without a metadata document registers
at /register (declaring application_type native, as SEP-837 has it), signs the person in and calls a tool
through the sidecar; what the server refuses is refused in OAuth's own form."""

from __future__ import annotations

import anyio
import httpx2
from flows import REDIRECT_PORT, Transcript
from mcp_authz_demo.agent import Agent
from mcp_authz_demo.grants import DEMO_PASSWORD, DEMO_USER
from mcp_authz_demo.person import HeadlessPerson


def test_a_client_without_a_metadata_document_registers_and_calls_a_tool(plane):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    transcript = Transcript()
    agent = Agent(
        mcp_url=url,
        client_id_url=None,
        redirect_uri=f"http://127.0.0.1:{REDIRECT_PORT}/callback",
        person=HeadlessPerson(DEMO_USER, DEMO_PASSWORD),
        say=transcript,
    )

    async def whoami():
        async with agent.session() as session:
            return await session.call_tool("whoami", {})

    result = anyio.run(whoami)
    said = str(transcript)
    registrations = [e for e in agent.exchanges if e.method == "POST" and e.url == f"{issuer}/register"]
    assert [e.status for e in registrations] == [201], said
    registered = registrations[0].body
    assert registered["client_id"].startswith("dcr-"), registered
    assert registered["application_type"] == "native", registered
    assert registered["token_endpoint_auth_method"] == "none", registered
    who = result.structured_content
    assert who["client_id"] == registered["client_id"], who
    assert who["subject"] == "demo@quickstart.example", who
    assert who["authorization_headers_seen"] == 0, "the sidecar forwarded a bearer token upstream"


def test_registrations_the_server_refuses_get_oauth_errors(plane):
    issuer = plane.ready["issuer"]
    loopback = f"http://127.0.0.1:{REDIRECT_PORT}/callback"
    cases = [
        (
            {"redirect_uris": [loopback]},
            "invalid_client_metadata",
            "application_type is required (SEP-837): native for a client on the person's machine with loopback "
            "redirect URIs, web for a web site with https redirect URIs",
        ),
        (
            {"application_type": "web", "redirect_uris": ["https://agent.example/cb"]},
            "invalid_redirect_uri",
            "this server registers native clients with loopback redirect URIs only; a web client is identified by "
            "a Client ID Metadata Document (an https client_id) instead",
        ),
    ]
    with httpx2.Client(timeout=10) as http:
        for body, error, description in cases:
            r = http.post(f"{issuer}/register", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json() == {"error": error, "error_description": description}, body
