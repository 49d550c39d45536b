"""Headless agents (the MCP client-credentials extension) with the official MCP Python SDK: clients the platform
team declared as MCPClients get a token for one service with their declared scopes and no person behind it, through
the SDK's PrivateKeyJWTOAuthProvider (a signed client assertion, the recommended way) and
ClientCredentialsOAuthProvider (a client secret), and call a tool through the sidecar. What they may not have is
refused in OAuth's own form."""

from __future__ import annotations

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client

from conftest import MACHINE_CLIENT, MACHINE_SECRET, MACHINE_SECRET_CLIENT
from flows import mcp_post
from test_enterprise import MemoryStorage, redeem_for_person


def secret_machine(url: str, issuer: str) -> ClientCredentialsOAuthProvider:
    """The SDK's client_credentials provider for the declared machine client with a secret, asking notes:read."""
    return ClientCredentialsOAuthProvider(
        server_url=url,
        storage=MemoryStorage(),
        client_id=MACHINE_SECRET_CLIENT,
        client_secret=MACHINE_SECRET,
        scope="notes:read",
        issuer=issuer,
    )


def call_whoami(url: str, issuer: str, provider) -> tuple[dict, list[httpx2.Response]]:
    token_requests: list[httpx2.Response] = []

    async def keep(response: httpx2.Response) -> None:
        if str(response.request.url) == f"{issuer}/token":
            await response.aread()
            token_requests.append(response)

    async def run():
        async with httpx2.AsyncClient(auth=provider, timeout=30.0, event_hooks={"response": [keep]}) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    return await session.call_tool("whoami", {})

    return anyio.run(run).structured_content, token_requests


def test_a_machine_client_with_a_key_gets_a_token_without_a_person_and_calls_a_tool(plane, machine_key):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    params = SignedJWTParameters(issuer=MACHINE_CLIENT, subject=MACHINE_CLIENT, signing_key=machine_key.pem(), signing_algorithm="ES256")
    provider = PrivateKeyJWTOAuthProvider(
        server_url=url,
        storage=MemoryStorage(),
        client_id=MACHINE_CLIENT,
        assertion_provider=params.create_assertion_provider(),
        scope="notes:read",
        issuer=issuer,
    )
    who, token_requests = call_whoami(url, issuer, provider)
    assert [r.status_code for r in token_requests] == [200], [r.text for r in token_requests]
    token = token_requests[0].json()
    assert token["scope"] == "notes:read", token
    assert "refresh_token" not in token, token
    # The subject is the client itself: no person signed in or consented.
    assert who["subject"] == MACHINE_CLIENT, who
    assert who["client_id"] == MACHINE_CLIENT, who
    assert who["scopes"] == "notes:read", who
    # The sidecar tells the MCP server no person is behind this call.
    assert who["caller"] == "machine", who
    assert who["authorization_headers_seen"] == 0, "the sidecar forwarded a bearer token upstream"


def test_a_machine_client_with_a_secret_gets_a_token_and_calls_a_tool(plane):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    provider = secret_machine(url, issuer)
    who, token_requests = call_whoami(url, issuer, provider)
    assert [r.status_code for r in token_requests] == [200], [r.text for r in token_requests]
    assert who["subject"] == MACHINE_SECRET_CLIENT, who


def test_what_a_machine_client_may_not_have_is_refused(plane):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]

    def ask(**form: str) -> tuple[int, str, str]:
        response = httpx2.post(
            f"{issuer}/token",
            data={"grant_type": "client_credentials", **form},
            auth=(MACHINE_SECRET_CLIENT, form.pop("secret", MACHINE_SECRET)),
            timeout=10.0,
        )
        body = response.json()
        return response.status_code, body.get("error", ""), body.get("error_description", "")

    assert ask(resource=url, scope="notes:read")[0] == 200
    cases = [
        # A person's scope the platform team did not give the machine.
        ({"resource": url, "scope": "notes:write"}, (400, "invalid_scope", 'scope "notes:write" is not allowed for this client')),
        # A resource the server does not protect.
        ({"resource": "https://elsewhere.example/mcp"}, (400, "invalid_target", None)),
        # The wrong secret.
        ({"resource": url, "secret": "x" * 40}, (401, "invalid_client", "the client secret is not this client's")),
    ]
    for form, (status, error, description) in cases:
        got = ask(**form)
        if description is None:
            assert got[:2] == (status, error), (form, got)
        else:
            assert got == (status, error, description), (form, got)


def test_rules_tell_people_from_machine_clients(plane, enterprise_idp):
    """The `reports` service keeps whoami for machines and read_note for people, whatever the scopes: each kind
    of caller is refused the other's tool with 403 and no step-up challenge, and gets its own through the SDK."""
    url, issuer = plane.service("reports")["url"], plane.ready["issuer"]

    def call(token: str, tool: str) -> httpx2.Response:
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
        return anyio.run(mcp_post, url, token, body)

    def refused_with(response: httpx2.Response, message: str) -> None:
        assert response.status_code == 403, response.text
        assert "www-authenticate" not in response.headers, response.headers
        assert response.json() == {"jsonrpc": "2.0", "id": 7, "error": {"code": -32003, "message": message}}

    machine = httpx2.post(
        f"{issuer}/token",
        data={"grant_type": "client_credentials", "resource": url, "scope": "notes:read"},
        auth=(MACHINE_SECRET_CLIENT, MACHINE_SECRET),
        timeout=10.0,
    )
    assert machine.status_code == 200, machine.text
    refused_with(
        call(machine.json()["access_token"], "read_note"),
        "forbidden: this operation is for people only, not for clients acting alone",
    )

    person = redeem_for_person(issuer, url, enterprise_idp)
    assert person.status_code == 200, person.text
    assert person.json()["scope"] == "notes:read", person.text
    refused_with(call(person.json()["access_token"], "whoami"), "forbidden: this operation is for machine clients only")

    # The machine's own tool, through the official SDK, and the kind the MCP server is told.
    provider = secret_machine(url, issuer)
    who, token_requests = call_whoami(url, issuer, provider)
    assert [r.status_code for r in token_requests] == [200], [r.text for r in token_requests]
    assert (who["subject"], who["caller"]) == (MACHINE_SECRET_CLIENT, "machine"), who
