"""The agent: the official MCP Python SDK client (`OAuthClientProvider` with `client_metadata_url`, so it
identifies by its Client ID Metadata Document), driven headlessly, and narrating each step a person should see.

Nothing here reimplements OAuth: discovery, CIMD, PKCE, the token exchange, refresh and the step-up on 403 are
the SDK's. This module only answers its two questions (where to send the person, what came back) and watches
the HTTP exchanges to tell the story.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from .person import AuthorizationOutcome, HeadlessPerson, PageSeen


class MemoryStorage:
    """The SDK's TokenStorage, in memory, optionally mirrored to a JSON file (so an agent can restart)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("tokens"):
                self.tokens = OAuthToken.model_validate(saved["tokens"])
            if saved.get("client_info"):
                self.client_info = OAuthClientInformationFull.model_validate(saved["client_info"])

    def _save(self) -> None:
        if self.path is not None:
            self.path.write_text(
                json.dumps(
                    {
                        "tokens": self.tokens.model_dump(mode="json") if self.tokens else None,
                        "client_info": self.client_info.model_dump(mode="json") if self.client_info else None,
                    }
                )
            )

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self._save()

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info
        self._save()


@dataclass
class Exchange:
    """One HTTP request the agent made and what it got."""

    method: str
    url: str
    status: int
    www_authenticate: str | None
    body: Any = None


class ConsentRefused(Exception):
    """The authorization server sent the person back with an error instead of a code."""

    def __init__(self, outcome: AuthorizationOutcome) -> None:
        desc = outcome.params.get("error_description", "")
        super().__init__(f"authorization refused: {outcome.error} {desc}".strip())
        self.outcome = outcome


@dataclass
class Agent:
    """One MCP client identity (its CIMD URL, or none: the SDK then registers at /register) talking to one
    protected MCP service."""

    mcp_url: str
    client_id_url: str | None
    redirect_uri: str
    person: HeadlessPerson
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    say: Callable[[str], None] = lambda line: None
    exchanges: list[Exchange] = field(default_factory=list)
    outcomes: list[AuthorizationOutcome] = field(default_factory=list)
    authorization_urls: list[str] = field(default_factory=list)
    _pending: AuthorizationOutcome | None = None

    def __post_init__(self) -> None:
        self.person.on_page = self._on_page
        self.provider = OAuthClientProvider(
            server_url=self.mcp_url,
            client_metadata=OAuthClientMetadata(
                client_name="Quickstart agent",
                redirect_uris=[self.redirect_uri],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=self.storage,
            redirect_handler=self._redirect,
            callback_handler=self._callback,
            client_metadata_url=self.client_id_url,
        )

    # --- the SDK's two questions -------------------------------------------------------------------------

    async def _redirect(self, authorization_url: str) -> None:
        self.authorization_urls.append(authorization_url)
        query = {k: v[0] for k, v in parse_qs(urlparse(authorization_url).query).items()}
        self.say(
            f"authorize: the browser opens {urlparse(authorization_url)._replace(query='').geturl()}\n"
            f"      client_id={query.get('client_id')}\n"
            f"      scope={query.get('scope')!r} resource={query.get('resource')} "
            f"code_challenge_method={query.get('code_challenge_method')}"
        )
        outcome = await self.person.authorize(authorization_url, self.redirect_uri)
        self.outcomes.append(outcome)
        self._pending = outcome

    async def _callback(self) -> AuthorizationCodeResult:
        outcome, self._pending = self._pending, None
        assert outcome is not None, "callback without a redirect"
        if outcome.code is None:
            self.say(f"redirect back: error={outcome.error} {outcome.params.get('error_description', '')}")
            raise ConsentRefused(outcome)
        self.say(f"redirect back to {self.redirect_uri} with a code (iss={outcome.params.get('iss')})")
        return AuthorizationCodeResult(code=outcome.code, state=outcome.params.get("state"), iss=outcome.params.get("iss"))

    def _on_page(self, page: PageSeen) -> None:
        if page.kind == "login":
            self.say(f"login page ({page.status}): signing in as {self.person.username!r}")
        elif page.kind == "consent":
            self.say(f"consent page ({page.status}): {page.text[:600]}\n      -> {self.person.decision}")
        else:
            self.say(f"page ({page.status}): {page.text[:400]}")

    # --- watching the wire ---------------------------------------------------------------------------------

    async def _on_response(self, response: httpx2.Response) -> None:
        request = response.request
        url = str(request.url)
        www = response.headers.get("www-authenticate")
        body: Any = None
        content_type = response.headers.get("content-type", "")
        if "/.well-known/" in url or (request.method == "POST" and "json" in content_type and url != self.mcp_url):
            await response.aread()
            try:
                body = response.json()
            except ValueError:
                body = None
        self.exchanges.append(Exchange(request.method, url, response.status_code, www, body))
        self._narrate(request.method, url, response.status_code, www, body)

    def _narrate(self, method: str, url: str, status: int, www: str | None, body: Any) -> None:
        if url == self.mcp_url and status in (401, 403):
            kind = "no valid token" if status == 401 else "the token lacks a scope"
            self.say(f"{method} {url} -> {status} ({kind})\n      WWW-Authenticate: {www}")
        elif "/.well-known/oauth-protected-resource" in url and isinstance(body, dict):
            self.say(
                f"discovery: GET {url} -> {status}\n      resource={body.get('resource')} "
                f"authorization_servers={body.get('authorization_servers')} scopes_supported={body.get('scopes_supported')}"
            )
        elif "/.well-known/" in url and isinstance(body, dict) and "issuer" in body:
            self.say(
                f"discovery: GET {url} -> {status}\n      issuer={body.get('issuer')} "
                f"client_id_metadata_document_supported={body.get('client_id_metadata_document_supported')}"
            )
        elif "/.well-known/" in url:
            self.say(f"discovery: GET {url} -> {status}")
        elif isinstance(body, dict) and ("access_token" in body or "error" in body) and method == "POST":
            if "access_token" in body:
                self.say(
                    f"token: POST {url} -> {status}: token_type={body.get('token_type')} "
                    f"scope={body.get('scope')!r} expires_in={body.get('expires_in')} "
                    f"refresh_token={'yes' if body.get('refresh_token') else 'no'}"
                )
            else:
                self.say(f"token: POST {url} -> {status}: {body}")

    # --- using it ------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[ClientSession]:
        """An initialized MCP session through the sidecar, authorized as needed by the SDK."""
        async with httpx2.AsyncClient(
            auth=self.provider, timeout=30.0, event_hooks={"response": [self._on_response]}
        ) as http:
            async with streamable_http_client(self.mcp_url, http_client=http) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    yield session

    @property
    def access_token(self) -> str | None:
        return self.storage.tokens.access_token if self.storage.tokens else None
