"""The quickstart's demo MCP server: a small notebook, built on the official MCP Python SDK.

It knows nothing about OAuth. The mcp-authz sidecar in front of it checks every token and every tool call
against the scopes of `manifests/notes-service.yaml` (`notes:read` for reading, the sensitive `notes:write`
for changes), and forwards only the verified identity in headers, never the token.

    python notes_server.py --port 8000
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import urllib.error
import urllib.request

from mcp.server.mcpserver import Context, MCPServer

# Headers the sidecar sets from the verified token (its identityHeaders defaults).
SUBJECT_HEADER = "x-mcp-authz-subject"
CLIENT_ID_HEADER = "x-mcp-authz-client-id"
SCOPES_HEADER = "x-mcp-authz-scopes"
CALLER_HEADER = "x-mcp-authz-caller"
# Where the sidecar hands this server its token for the inventory API (AuthorizationServer spec.tokenExchange).
INVENTORY_TOKEN_HEADER = "x-inventory-token"
# Where the sidecar hands this server the person's own token at a third-party provider (spec.providers).
ACME_TOKEN_HEADER = "x-acme-token"


class Notebook:
    """Notes kept in memory, per subject: what one person writes, only that person reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._notes: dict[str, dict[int, str]] = {}

    def add(self, owner: str, text: str) -> int:
        with self._lock:
            note_id = next(self._ids)
            self._notes.setdefault(owner, {})[note_id] = text
            return note_id

    def list(self, owner: str) -> dict[int, str]:
        with self._lock:
            return dict(self._notes.get(owner, {}))

    def delete(self, owner: str, note_id: int) -> bool:
        with self._lock:
            return self._notes.get(owner, {}).pop(note_id, None) is not None


def _owner(ctx: Context) -> str:
    # A machine client's subject is its client id, which may read like a person's name: the kind of caller is part
    # of whose notes these are.
    headers = ctx.headers or {}
    return f"{headers.get(CALLER_HEADER, 'unknown')}:{headers.get(SUBJECT_HEADER, 'anonymous')}"


def build_server(inventory_url: str | None = None, acme_url: str | None = None) -> MCPServer:
    notebook = Notebook()
    server = MCPServer(name="quickstart-notes", instructions="A small notebook protected by mcp-authz.")
    # Whether a bearer token ever reached this server: the sidecar must never forward one.
    seen = {"authorization_headers": 0}

    @server.tool(description="List your notes (needs notes:read).")
    def list_notes(ctx: Context) -> dict[str, str]:
        return {str(k): v for k, v in notebook.list(_owner(ctx)).items()}

    @server.tool(description="Read one note by its id (needs notes:read).")
    def read_note(note_id: int, ctx: Context) -> str:
        note = notebook.list(_owner(ctx)).get(note_id)
        if note is None:
            raise ValueError(f"no note {note_id}")
        return note

    @server.tool(description="Add a note and return its id (needs the sensitive notes:write).")
    def add_note(text: str, ctx: Context) -> int:
        return notebook.add(_owner(ctx), text)

    @server.tool(description="Delete a note by its id (needs the sensitive notes:write).")
    def delete_note(note_id: int, ctx: Context) -> bool:
        return notebook.delete(_owner(ctx), note_id)

    @server.tool(description="Who the sidecar says is calling, and whether any bearer token reached this server.")
    def whoami(ctx: Context) -> dict[str, object]:
        headers = ctx.headers or {}
        if "authorization" in {k.lower() for k in headers}:
            seen["authorization_headers"] += 1
        return {
            "subject": headers.get(SUBJECT_HEADER),
            "client_id": headers.get(CLIENT_ID_HEADER),
            "scopes": headers.get(SCOPES_HEADER),
            # `person`, or `machine` for a client acting for itself (client_credentials).
            "caller": headers.get(CALLER_HEADER),
            "authorization_headers_seen": seen["authorization_headers"],
        }

    @server.tool(
        description="Ask the inventory API, as the person calling, what it knows of them (needs the platform's "
        "tokenExchange edge to the inventory API)."
    )
    def inventory_lookup(ctx: Context) -> dict[str, object]:
        # The sidecar obtained this token for this one downstream; the person's own token never reaches this server.
        token = (ctx.headers or {}).get(INVENTORY_TOKEN_HEADER)
        if not inventory_url or not token:
            raise ValueError("no inventory API is configured for this server, or no token for it came with the call")
        request = urllib.request.Request(f"{inventory_url}/me", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as refused:
            raise ValueError(f"the inventory API refused the call: HTTP {refused.code} {refused.read()[:200]!r}")

    @server.tool(
        description="Ask the Acme provider what it says of the person's own account there (needs the person to "
        "have connected Acme; the platform's spec.providers hands this server their token)."
    )
    def acme_profile(ctx: Context) -> dict[str, object]:
        token = (ctx.headers or {}).get(ACME_TOKEN_HEADER)
        if not acme_url or not token:
            raise ValueError("no Acme provider is configured for this server, or no token for it came with the call")
        request = urllib.request.Request(f"{acme_url}/me", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as refused:
            raise ValueError(f"Acme refused the call: HTTP {refused.code}")

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("--inventory-url", help="base URL of the inventory API that inventory_lookup calls")
    parser.add_argument("--acme-url", help="issuer of the Acme provider whose userinfo acme_profile reads")
    args = parser.parse_args()
    build_server(args.inventory_url, args.acme_url).run(
        "streamable-http",
        host=args.host,
        port=args.port,
        streamable_http_path=args.path,
    )


if __name__ == "__main__":
    main()
