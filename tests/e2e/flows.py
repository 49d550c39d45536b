"""Helpers of the end-to-end tests: the SDK agent against a plane, and a bare authorization-code exchange used
only to set up preconditions (a token with fewer scopes than the service challenges for, a refresh token to
rotate) that the SDK itself then works from."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp_authz_demo.agent import Agent, MemoryStorage
from mcp_authz_demo.cimd_host import CimdHost, agent_document
from mcp_authz_demo.person import AuthorizationOutcome, HeadlessPerson
from mcp_authz_demo.walkthrough import DEMO_PASSWORD, DEMO_USER, make_agent

REDIRECT_PORT = 53682


class Transcript:
    """Collects what the agent says, for failure messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def __str__(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Grant:
    """Tokens from one authorization."""

    client_id: str
    redirect_uri: str
    token: dict[str, Any]
    outcome: AuthorizationOutcome


def publish_agent(host: CimdHost, path: str, overrides: dict[str, Any] | None = None) -> tuple[str, str]:
    redirect_uri = f"http://127.0.0.1:{REDIRECT_PORT}/callback"
    client_id = host.url(path)
    document = agent_document(client_id, redirect_uri)
    document.update(overrides or {})
    host.publish(path, document)
    return client_id, redirect_uri


async def authorize(
    issuer: str, resource: str, scope: str, client_id: str, redirect_uri: str, decision: str = "approve"
) -> tuple[AuthorizationOutcome, str]:
    """A person logs in and decides; returns where they were sent back to and the PKCE verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "resource": resource,
            "state": secrets.token_urlsafe(16),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    person = HeadlessPerson(DEMO_USER, DEMO_PASSWORD, decision=decision)
    async with person.client:
        outcome = await person.authorize(f"{issuer}/authorize?{query}", redirect_uri)
    return outcome, verifier


async def token_request(issuer: str, form: dict[str, str]) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=15.0) as http:
        return await http.post(f"{issuer}/token", data=form)


async def grant(issuer: str, resource: str, scope: str, host: CimdHost, path: str) -> Grant:
    """An authorization-code grant for `scope` on `resource`, as any OAuth client would get it."""
    client_id, redirect_uri = publish_agent(host, path)
    outcome, verifier = await authorize(issuer, resource, scope, client_id, redirect_uri)
    assert outcome.code, f"no code: {outcome.params}"
    response = await token_request(
        issuer,
        {
            "grant_type": "authorization_code",
            "code": outcome.code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        },
    )
    assert response.status_code == 200, response.text
    return Grant(client_id, redirect_uri, response.json(), outcome)


def seeded_storage(g: Grant) -> MemoryStorage:
    """SDK token storage holding `g`, as if the agent had authorized in an earlier run."""
    storage = MemoryStorage()
    storage.tokens = OAuthToken.model_validate(g.token)
    storage.client_info = OAuthClientInformationFull(
        client_id=g.client_id, token_endpoint_auth_method="none", redirect_uris=[g.redirect_uri]
    )
    return storage


async def mcp_post(url: str, token: str | None, body: dict[str, Any], session: str | None = None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if session:
        headers["Mcp-Session-Id"] = session
    async with httpx2.AsyncClient(timeout=15.0) as http:
        return await http.post(url, json=body, headers=headers)


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}},
}


def sdk_agent(url: str, host: CimdHost, path: str, transcript: Transcript, **kwargs: Any) -> Agent:
    return make_agent(url, host, transcript, path=path, redirect_port=REDIRECT_PORT, **kwargs)
