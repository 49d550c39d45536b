"""Enterprise-managed authorization with the official MCP Python SDK: a declared confidential client (an MCPClient
with a client secret) redeems an ID-JAG from the company's identity provider with the SDK's
IdentityAssertionOAuthProvider, no browser and no consent page, and calls a tool through the sidecar as the
person the provider named. What the server refuses is refused in OAuth's own form.

No package ships an identity provider that issues ID-JAGs, so the provider is `EnterpriseIdp` (conftest.py):
an ES256 key whose public half the AuthorizationServer manifest trusts, signing with PyJWT."""

from __future__ import annotations

import time

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthToken

from conftest import ENTERPRISE_AGENT, ENTERPRISE_SECRET

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def redeem_for_person(issuer: str, url: str, enterprise_idp, scope: str = "notes:read") -> httpx2.Response:
    """The enterprise agent redeems a fresh ID-JAG for employee-42 at `url`, as a plain form post."""
    return httpx2.post(
        f"{issuer}/token",
        data={
            "grant_type": JWT_BEARER,
            "assertion": enterprise_idp.id_jag(audience=issuer, resource=url, scope=scope),
            "client_id": ENTERPRISE_AGENT,
            "client_secret": ENTERPRISE_SECRET,
        },
        timeout=10.0,
    )


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return None

    async def set_client_info(self, client_info) -> None:
        pass


def test_an_enterprise_agent_redeems_its_identity_providers_assertion_and_calls_a_tool(plane, enterprise_idp):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    asked: list[tuple[str, str]] = []

    async def fetch_id_jag(audience: str, resource: str) -> str:
        asked.append((audience, resource))
        return enterprise_idp.id_jag(audience=audience, resource=resource, scope="notes:read notes:write")

    provider = IdentityAssertionOAuthProvider(
        server_url=url,
        storage=MemoryStorage(),
        client_id=ENTERPRISE_AGENT,
        client_secret=ENTERPRISE_SECRET,
        issuer=issuer,
        assertion_provider=fetch_id_jag,
        scope="notes:read",
    )
    token_requests: list[httpx2.Response] = []

    async def keep(response: httpx2.Response) -> None:
        if str(response.request.url) == f"{issuer}/token":
            await response.aread()
            token_requests.append(response)

    async def whoami():
        async with httpx2.AsyncClient(auth=provider, timeout=30.0, event_hooks={"response": [keep]}) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    return await session.call_tool("whoami", {})

    result = anyio.run(whoami)
    # The provider was asked once, for this server and this service, and its assertion was redeemed once.
    assert asked == [(issuer, url)], asked
    assert [r.status_code for r in token_requests] == [200], [r.text for r in token_requests]
    token = token_requests[0].json()
    assert token["scope"] == "notes:read", token
    assert "refresh_token" not in token, token
    who = result.structured_content
    assert who["subject"] == "employee-42", who
    assert who["client_id"] == ENTERPRISE_AGENT, who
    assert who["scopes"] == "notes:read", who
    assert who["caller"] == "person", who
    assert who["authorization_headers_seen"] == 0, "the sidecar forwarded a bearer token upstream"


def test_assertions_the_server_refuses_get_oauth_errors(plane, enterprise_idp):
    issuer, url = plane.ready["issuer"], plane.service("notes")["url"]
    spent = enterprise_idp.id_jag(audience=issuer, resource=url, scope="notes:read")

    def redeem(assertion: str, **extra: str) -> tuple[int, str, str]:
        form = {
            "grant_type": JWT_BEARER,
            "assertion": assertion,
            "client_id": ENTERPRISE_AGENT,
            "client_secret": ENTERPRISE_SECRET,
            **extra,
        }
        response = httpx2.post(f"{issuer}/token", data=form, timeout=10.0)
        body = response.json()
        return response.status_code, body.get("error", ""), body.get("error_description", "")

    assert redeem(spent)[0] == 200
    now = int(time.time())
    cases = [
        (spent, {}, (400, "invalid_grant", None)),
        (
            enterprise_idp.id_jag(audience="https://another-server.example", resource=url, scope="notes:read"),
            {},
            (400, "invalid_grant", f"the assertion's aud must be this server's issuer {issuer}"),
        ),
        (
            enterprise_idp.id_jag(audience=issuer, resource=url, scope="notes:read", iat=now - 900, exp=now - 600),
            {},
            (400, "invalid_grant", "the assertion has expired"),
        ),
        (
            enterprise_idp.stranger_id_jag(audience=issuer, resource=url, scope="notes:read"),
            {},
            (400, "invalid_grant", "the assertion's issuer \"https://stranger.example\" is not a trusted identity provider"),
        ),
        (
            enterprise_idp.id_jag(audience=issuer, resource=url, scope="notes:read"),
            {"scope": "notes:read notes:write"},
            (400, "invalid_scope", "scope \"notes:write\" is not granted by the identity provider's assertion"),
        ),
        (
            enterprise_idp.id_jag(audience=issuer, resource=url, scope="notes:read"),
            {"client_secret": "x" * 40},
            (401, "invalid_client", "the client secret is not this client's"),
        ),
    ]
    for assertion, extra, (status, error, description) in cases:
        got = redeem(assertion, **extra)
        if description is None:
            assert got[:2] == (status, error) and got[2].endswith("was already redeemed"), got
        else:
            assert got == (status, error, description), (extra, got)


def test_the_metadata_advertises_the_grant_and_its_profile(plane):
    metadata = httpx2.get(f"{plane.ready['issuer']}/.well-known/oauth-authorization-server", timeout=10.0).json()
    assert JWT_BEARER in metadata["grant_types_supported"], metadata
    assert metadata["authorization_grant_profiles_supported"] == ["urn:ietf:params:oauth:grant-profile:id-jag"]
    assert "client_secret_post" in metadata["token_endpoint_auth_methods_supported"], metadata
