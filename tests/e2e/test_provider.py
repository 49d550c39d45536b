"""Third-party APIs with the person's own account (issue 18 part 2), end to end: the platform's AuthorizationServer
declares the Acme provider (a real npm oidc-provider with its own sign-in and consent pages) for the tracker service
(`spec.providers`); the official MCP Python SDK signs the person in, our consent page names Acme and goes on to
connect it, and the demo server's `acme_profile` tool reads Acme's userinfo with the token the sidecar handed it.
Then the person disconnects: the next call is answered with the URL elicitation the SDK itself parses, the person
opens its link, connects again, and the retried call goes through. The person's token never reaches the server."""

from __future__ import annotations

from urllib.parse import urljoin

import anyio
from flows import Transcript, sdk_agent
from mcp.shared.exceptions import MCPError, UrlElicitationRequiredError
from mcp_authz_demo.person import parse_page


async def walk_connect(client, url: str, issuer: str, username: str) -> str:
    """Opens `url` in the person's browser and answers the provider's own pages, whichever it shows; the text of
    the first page of ours it ends on."""
    method, data = "GET", None
    for _ in range(10):
        response = await client.request(method, url, data=data, follow_redirects=False)
        if response.is_redirect:
            url, method, data = urljoin(url, response.headers["location"]), "GET", None
            continue
        forms, text = parse_page(response.text)
        if url.startswith(issuer):
            return text
        form = next(f for f in forms if f.method == "post")
        data = dict(form.fields)
        if form.has_password:
            data["login"], data["password"] = username, "any"
        data.update(form.submits[:1])
        url, method = urljoin(url, form.action or url), "POST"
    raise AssertionError("the provider's pages did not end")


def test_a_person_connects_acme_on_consent_then_again_from_the_url_elicitation(plane, cimd_host, acme):
    url, issuer = plane.service("tracker")["url"], plane.ready["issuer"]
    transcript = Transcript()
    agent = sdk_agent(url, cimd_host, "/agents/tracker-agent.json", transcript)

    async def call(session, name: str):
        return await session.call_tool(name, {})

    # One event loop for the whole story: the person's browser (an HTTP client) keeps its connections across it.
    async def scenario():
        async with agent.session() as session:
            profile, who = await call(session, "acme_profile"), await call(session, "whoami")
        person = agent.person.client
        form_page = await person.get(f"{issuer}/connect/acme/disconnect")
        forms, _ = parse_page(form_page.text)
        disconnected = await person.post(f"{issuer}/connect/acme/disconnect", data=dict(forms[0].fields))
        async with agent.session() as session:
            try:
                await call(session, "acme_profile")
            except MCPError as refused:
                elicitation = UrlElicitationRequiredError.from_error(refused.error)
            else:
                raise AssertionError("a call needing Acme went through without a connection")
            link = elicitation.elicitations[0]
            page = await walk_connect(person, link.url, issuer, "demo")
            retried = await call(session, "acme_profile")
        return profile, who, disconnected.text, link, page, retried

    profile, who, disconnected, link, page, retried = anyio.run(scenario)
    said = str(transcript)
    assert not profile.is_error, (profile, said)
    # Acme's own view of the account, read with the token the sidecar obtained for this person.
    assert profile.structured_content["sub"] == "demo", (profile, said)
    assert who.structured_content["authorization_headers_seen"] == 0, "the sidecar forwarded a bearer token upstream"
    pages = agent.outcomes[0].pages
    assert [p.kind for p in pages][:2] == ["login", "consent"], said
    # Every provider the service receives the person's access at is named, with whether it is connected yet.
    assert "receives access to your own account at: Acme (not connected)" in pages[1].text, pages[1].text
    # Then Acme's own sign-in, on its own host.
    assert any(p.url.startswith(acme) for p in pages[2:]), [p.url for p in pages]
    assert "Your Acme account is no longer connected." in disconnected, disconnected
    # The SDK's own model of the URL elicitation required error (-32042) reads the sidecar's answer.
    assert link.mode == "url" and link.url == f"{issuer}/connect/acme" and link.elicitation_id, link
    assert "Your Acme account is connected." in page, page
    assert not retried.is_error, retried
    assert retried.structured_content["sub"] == "demo", retried
