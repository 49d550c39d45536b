"""Helpers of the end-to-end tests: the SDK agent against a plane, and a bare authorization-code exchange used
only to set up preconditions (a token with fewer scopes than the service challenges for, a refresh token to
rotate) that the SDK itself then works from."""

from __future__ import annotations

from typing import Any

import httpx2
from mcp_authz_demo.agent import Agent
from mcp_authz_demo.cimd_host import CimdHost
from mcp_authz_demo.grants import (  # noqa: F401 (re-exported for the tests)
    REDIRECT_PORT,
    Grant,
    authorize,
    grant,
    publish_agent,
    seeded_storage,
    token_request,
)
from mcp_authz_demo.walkthrough import make_agent


class Transcript:
    """Collects what the agent says, for failure messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def __str__(self) -> str:
        return "\n".join(self.lines)


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
