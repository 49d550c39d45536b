"""A real MCP server (official Python SDK, streamable HTTP) that the sidecar tests put behind the sidecar.

Usage: python upstream_server.py PORT [json]
"""
import sys
from typing import Annotated

from pydantic import Field

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("sidecar-test-upstream")


@server.tool()
def get_user(name: str) -> str:
    """Reads a user."""
    return f"user {name}"


@server.tool()
def get_region(
    ctx: Context, region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]
) -> str:
    """Reads a region; its argument is mirrored into the `Mcp-Param-Region` header on 2026-07-28 (SEP-2243)."""
    request = ctx.request_context.request
    headers = request.headers if request is not None else {}
    return f"{region}|header:{headers.get('mcp-param-region', '-')}"


@server.tool()
def delete_user(name: str) -> str:
    """Deletes a user."""
    return f"deleted {name}"


@server.tool()
def whoami(ctx: Context) -> str:
    """Echoes the identity headers the sidecar forwarded (and whether a token leaked through)."""
    request = ctx.request_context.request
    headers = request.headers if request is not None else {}
    return "|".join(
        [
            headers.get("x-mcp-authz-subject", "-"),
            headers.get("x-mcp-authz-client-id", "-"),
            headers.get("x-mcp-authz-scopes", "-"),
            "authorization:" + ("present" if "authorization" in headers else "absent"),
        ]
    )


if __name__ == "__main__":
    port = int(sys.argv[1])
    json_response = len(sys.argv) > 2 and sys.argv[2] == "json"
    server.run("streamable-http", host="127.0.0.1", port=port, json_response=json_response)
