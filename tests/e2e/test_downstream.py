"""Downstream calls as the person (RFC 8693 token exchange), end to end: the platform's AuthorizationServer lets the
notes service call the inventory API (`spec.tokenExchange`), the official MCP Python SDK calls the demo server's
`inventory_lookup` tool, the sidecar trades the caller's token for one to the inventory API and hands it to the MCP
server in `x-inventory-token`, and the inventory API (`inventory_api.py`) verifies it with the plane's keys: its own
audience, the person, and the notes service named as the actor. The person's token never reaches the MCP server."""

from __future__ import annotations

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from conftest import ENTERPRISE_AGENT, ENTERPRISE_SECRET, MACHINE_SECRET_CLIENT
from flows import mcp_post
from inventory_api import AUDIENCE
from test_enterprise import MemoryStorage, redeem_for_person
from test_machine_clients import secret_machine


def call_tools(url: str, provider, *names: str):
    async def run():
        async with httpx2.AsyncClient(auth=provider, timeout=30.0) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    return [await session.call_tool(name, {}) for name in names]

    return anyio.run(run)


def test_the_mcp_server_calls_its_downstream_as_the_person_without_the_persons_token(plane, enterprise_idp, inventory):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    inventory.issuer, inventory.actor = issuer, url
    before = len(inventory.seen)

    async def fetch_id_jag(audience: str, resource: str) -> str:
        return enterprise_idp.id_jag(audience=audience, resource=resource, scope="notes:read")

    storage = MemoryStorage()
    provider = IdentityAssertionOAuthProvider(
        server_url=url,
        storage=storage,
        client_id=ENTERPRISE_AGENT,
        client_secret=ENTERPRISE_SECRET,
        issuer=issuer,
        assertion_provider=fetch_id_jag,
        scope="notes:read",
    )
    first, second, who = call_tools(url, provider, "inventory_lookup", "inventory_lookup", "whoami")
    assert not first.is_error, first
    seen = first.structured_content
    assert seen["sub"] == "employee-42", seen
    assert seen["client_id"] == ENTERPRISE_AGENT, seen
    assert seen["aud"] == AUDIENCE, seen
    assert seen["scope"] == "notes:read", seen
    assert seen["mcp_authz_caller"] == "person", seen
    # The notes service acted for the person, and is named so.
    assert seen["act"] == {"sub": url}, seen
    assert second.structured_content == seen
    assert len(inventory.seen) == before + 2
    # Nothing but the exchanged token reached the MCP server.
    assert who.structured_content["authorization_headers_seen"] == 0, who
    # The person's own token for the notes service, shown to the downstream directly: wrong audience, no actor.
    assert inventory.verify(f"Bearer {storage.tokens.access_token}") == (
        None,
        "InvalidAudienceError: Audience doesn't match",
    )


def test_a_machine_clients_downstream_token_says_it_is_a_machine(plane, inventory):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    inventory.issuer, inventory.actor = issuer, url
    provider = secret_machine(url, issuer)
    (result,) = call_tools(url, provider, "inventory_lookup")
    assert not result.is_error, result
    seen = result.structured_content
    assert (seen["sub"], seen["mcp_authz_caller"], seen["act"]) == (MACHINE_SECRET_CLIENT, "machine", {"sub": url}), seen


def test_a_revoked_grant_gets_no_downstream_token(plane, enterprise_idp, inventory):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    inventory.issuer, inventory.actor = issuer, url
    token = redeem_for_person(issuer, url, enterprise_idp)
    assert token.status_code == 200, token.text
    admin = plane.ready["admin"]["url"]
    revoked = httpx2.post(
        f"{admin}/admin/grants/revoke",
        params={"subject": "employee-42", "client_id": ENTERPRISE_AGENT},
        headers={"Authorization": f"Bearer {plane.admin_token()}"},
        timeout=10.0,
    )
    assert revoked.status_code == 200 and revoked.json()["revoked"] >= 1, revoked.text
    before = len(inventory.seen)
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "inventory_lookup", "arguments": {}}}
    refused = anyio.run(mcp_post, url, token.json()["access_token"], call)
    # Its token still verifies, but the issuer will not exchange it: the sidecar refuses the call itself.
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"].startswith(
        'Bearer error="invalid_token", error_description="the token is no longer active"'
    ), refused.headers
    assert len(inventory.seen) == before
