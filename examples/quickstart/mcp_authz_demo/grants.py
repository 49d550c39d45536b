"""Bare authorization-code grants: a person logs in and consents, and the code is exchanged, as any OAuth
client would do it. Used to set up an agent that was granted fewer scopes earlier (least privilege), from which
the SDK then steps up on its own, and by the tests for refresh and revocation."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from .agent import MemoryStorage
from .cimd_host import CimdHost, agent_document
from .person import AuthorizationOutcome, HeadlessPerson

DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"
REDIRECT_PORT = 53682


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
