"""The whole flow with the official MCP Python SDK client against `mcp-authz local` on the quickstart."""

from __future__ import annotations

import json

import anyio
import pytest
from flows import INITIALIZE, Transcript, grant, mcp_post, sdk_agent, seeded_storage
from mcp_authz_demo.walkthrough import walk


def test_the_sdk_client_walks_the_whole_flow(plane, cimd_host):
    """401 and discovery, the metadata document fetched and admitted, login, consent, token, tools."""
    url = plane.service("notes")["url"]
    issuer = plane.ready["issuer"]
    transcript = Transcript()
    headings: list[str] = []
    before = len(cimd_host.fetches)
    result = anyio.run(walk, url, issuer, cimd_host, transcript, headings.append)
    said = str(transcript)

    first = transcript.lines[0]
    assert first.startswith(f"POST {url} -> 401"), said
    assert f'resource_metadata="{url.rsplit("/mcp", 1)[0]}/.well-known/oauth-protected-resource/mcp"' in first, said
    assert any(f"authorization_servers=['{issuer}']" in line for line in transcript.lines), said
    assert any("client_id_metadata_document_supported=True" in line for line in transcript.lines), said
    fetched = [f for f in cimd_host.fetches[before:] if f.path == "/agents/quickstart-agent.json"]
    assert fetched and all(f.status == 200 for f in fetched), cimd_host.fetches
    assert [p.kind for p in result.pages][:2] == ["login", "consent"], said
    consents = [p for p in result.pages if p.kind == "consent"]
    # The first consent asks only for the basic scope (scopes_supported leaves sensitive ones out) ...
    for text in ("Read your notes", "localhost", "127.0.0.1"):
        assert text in consents[0].text, consents[0].text
    assert "Create and delete your notes" not in consents[0].text, consents[0].text
    # ... and the sensitive call steps up to a second consent that names the sensitive scope.
    assert len(consents) == 2, said
    assert "Create and delete your notes" in consents[1].text, consents[1].text
    assert any(line.startswith(f"token: POST {issuer}/token -> 200") for line in transcript.lines), said
    assert isinstance(result.read_result, dict), said
    assert set(result.write_result) == {"result"} and isinstance(result.write_result["result"], int), said
    assert result.whoami["subject"] == "demo@quickstart.example", said
    assert result.whoami["client_id"] == cimd_host.url("/agents/quickstart-agent.json"), said
    assert result.whoami["authorization_headers_seen"] == 0, "the sidecar forwarded a bearer token upstream"
    assert sorted(result.reader_tools) == ["inventory_lookup", "list_notes", "read_note", "whoami"], said
    assert result.step_up_challenge and 'error="insufficient_scope"' in result.step_up_challenge, said
    assert 'scope="notes:write"' in result.step_up_challenge, said
    assert set(result.step_up_result) == {"result"}, said


def test_a_sensitive_call_is_refused_with_403_naming_its_scope_and_the_sdk_steps_up(plane, cimd_host):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    path = "/agents/step-up.json"
    g = anyio.run(grant, issuer, url, "notes:read", cimd_host, path)
    assert g.token["scope"] == "notes:read"
    transcript = Transcript()
    agent = sdk_agent(url, cimd_host, path, transcript, storage=seeded_storage(g))

    async def use() -> tuple[list[str], object]:
        async with agent.session() as session:
            names = [t.name for t in (await session.list_tools()).tools]
            written = await session.call_tool("add_note", {"text": "needs step-up"})
            return names, written

    names, written = anyio.run(use)
    said = str(transcript)
    assert sorted(names) == ["inventory_lookup", "list_notes", "read_note", "whoami"], (
        "tools/list must hide what notes:read cannot call"
    )
    refusals = [e for e in agent.exchanges if e.url == url and e.status == 403]
    assert refusals, said
    assert 'error="insufficient_scope"' in refusals[0].www_authenticate, refusals[0].www_authenticate
    assert 'scope="notes:write"' in refusals[0].www_authenticate, refusals[0].www_authenticate
    assert "resource_metadata=" in refusals[0].www_authenticate
    assert len(agent.authorization_urls) == 1, said
    step_up = agent.authorization_urls[0]
    assert "scope=notes%3Aread+notes%3Awrite" in step_up, step_up
    assert not written.is_error, said
    assert agent.storage.tokens.scope.split() == ["notes:read", "notes:write"]


def test_tools_list_shows_only_what_the_token_may_call(plane, cimd_host):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    g = anyio.run(grant, issuer, url, "notes:read notes:write", cimd_host, "/agents/lister.json")
    transcript = Transcript()
    agent = sdk_agent(url, cimd_host, "/agents/lister.json", transcript, storage=seeded_storage(g))

    async def names() -> list[str]:
        async with agent.session() as session:
            return sorted(t.name for t in (await session.list_tools()).tools)

    assert anyio.run(names) == ["add_note", "delete_note", "inventory_lookup", "list_notes", "read_note", "whoami"]


def test_refresh_tokens_rotate_and_a_used_one_is_refused(plane, cimd_host):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    g = anyio.run(grant, issuer, url, "notes:read", cimd_host, "/agents/refresher.json")
    first = g.token["refresh_token"]
    form = {"grant_type": "refresh_token", "client_id": g.client_id, "resource": url}
    from flows import token_request

    rotated = anyio.run(token_request, issuer, {**form, "refresh_token": first})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["refresh_token"]
    assert second and second != first, "a public client's refresh token must rotate on every use"
    reused = anyio.run(token_request, issuer, {**form, "refresh_token": first})
    assert reused.status_code == 400, reused.text
    assert reused.json()["error"] == "invalid_grant", reused.text


def test_revocation_through_the_admin_api_ends_the_grant(plane, cimd_host):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    g = anyio.run(grant, issuer, url, "notes:read", cimd_host, "/agents/revoked.json")
    import httpx2

    admin = plane.ready["admin"]["url"]
    headers = {"Authorization": f"Bearer {plane.admin_token()}"}
    refused = httpx2.post(f"{admin}/admin/grants/revoke", params={"client_id": g.client_id})
    assert refused.status_code == 401, "the admin API must refuse a call without its credential"
    response = httpx2.post(f"{admin}/admin/grants/revoke", params={"client_id": g.client_id}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["revoked"], response.text
    from flows import token_request

    refresh = anyio.run(
        token_request,
        issuer,
        {"grant_type": "refresh_token", "client_id": g.client_id, "resource": url, "refresh_token": g.token["refresh_token"]},
    )
    assert refresh.status_code == 400 and refresh.json()["error"] == "invalid_grant", refresh.text


def test_revocation_stops_a_sensitive_call_at_once_and_the_rest_when_the_token_expires(plane, cimd_host):
    """The sidecar asks the issuer about every sensitive operation (authenticated as the service's own resource
    server), so a revoked grant's next sensitive call fails; other calls rest on the signed token until it expires."""
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    g = anyio.run(grant, issuer, url, "notes:read notes:write", cimd_host, "/agents/revoked-live.json")
    token = g.token["access_token"]
    assert 0 < g.token["expires_in"] <= 300, "notes:write caps the token's lifetime at 5 minutes"
    opened = anyio.run(mcp_post, url, token, INITIALIZE)
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    initialized = anyio.run(mcp_post, url, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    assert initialized.status_code == 202, initialized.text

    def call(number: int, name: str, arguments: dict[str, object]):
        body = {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        return anyio.run(mcp_post, url, token, body, session)

    before = call(2, "add_note", {"text": "written before the revocation"})
    assert before.status_code == 200 and '"isError":false' in before.text.replace(" ", ""), before.text

    import httpx2

    admin = plane.ready["admin"]["url"]
    headers = {"Authorization": f"Bearer {plane.admin_token()}"}
    revoked = httpx2.post(f"{admin}/admin/grants/revoke", params={"client_id": g.client_id}, headers=headers)
    assert revoked.status_code == 200 and revoked.json()["revoked"], revoked.text

    after = call(3, "add_note", {"text": "must not be written"})
    assert after.status_code == 401, f"a sensitive call after revocation: {after.status_code} {after.text}"
    challenge = after.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and "no longer active" in challenge, challenge
    still = call(4, "list_notes", {})
    assert still.status_code == 200, "a non-sensitive call rests on the signed token until it expires"
    assert "written before the revocation" in still.text and "must not be written" not in still.text, still.text


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("redirect elsewhere", {"redirect_uris": ["https://elsewhere.example/callback"]}, "redirect"),
        ("shared secret", {"token_endpoint_auth_method": "client_secret_basic"}, "client_secret_basic"),
    ],
)
def test_a_client_refused_by_policy_gets_an_error_a_person_can_act_on(plane, cimd_host, name, overrides, expected):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    path = f"/agents/refused-{name.replace(' ', '-')}.json"
    from flows import authorize, publish_agent
    from mcp_authz_demo.person import AuthorizationFailed

    client_id, redirect_uri = publish_agent(cimd_host, path, overrides)
    with pytest.raises(AuthorizationFailed) as refused:
        anyio.run(authorize, issuer, url, "notes:read", client_id, "http://127.0.0.1:53682/callback")
    page = refused.value.pages[-1]
    assert page.status == 400, page
    assert "invalid_client" in page.text, page.text
    assert expected in page.text, f"the refusal should say what to fix ({expected}): {page.text}"


def test_a_token_for_one_service_is_refused_by_another(plane, cimd_host):
    notes, archive = plane.service("notes")["url"], plane.service("archive")["url"]
    g = anyio.run(grant, plane.ready["issuer"], notes, "notes:read", cimd_host, "/agents/cross.json")
    own = anyio.run(mcp_post, notes, g.token["access_token"], INITIALIZE)
    assert own.status_code == 200, own.text
    other = anyio.run(mcp_post, archive, g.token["access_token"], INITIALIZE)
    assert other.status_code == 401, other.text
    challenge = other.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge, challenge
    assert "resource_metadata=" in challenge, challenge


def test_restarting_local_mode_mid_session_loses_no_grant(plane, cimd_host):
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    g = anyio.run(grant, issuer, url, "notes:read", cimd_host, "/agents/restart.json")
    assert plane.stop() == 0, plane.child.tail() if plane.child else ""
    ready = plane.start()
    assert ready["issuer"] == issuer and ready["services"]["notes"]["url"] == url, json.dumps(ready)
    still = anyio.run(mcp_post, url, g.token["access_token"], INITIALIZE)
    assert still.status_code == 200, f"the access token from before the restart: {still.status_code} {still.text}"
    from flows import token_request

    refreshed = anyio.run(
        token_request,
        issuer,
        {"grant_type": "refresh_token", "client_id": g.client_id, "resource": url, "refresh_token": g.token["refresh_token"]},
    )
    assert refreshed.status_code == 200, refreshed.text
