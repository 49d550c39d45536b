"""The official Python SDK's client talking to an MCP server through the sidecar; prints a JSON report.

Usage: python client.py URL TOKEN MODE   (MODE: legacy | auto)
"""
import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str, mode: str) -> dict:
    report: dict = {}
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            # Which protocol the connection settled on: `auto` must reach 2026-07-28 through the sidecar, not
            # fall back to the handshake because the sidecar refused its modern requests.
            report["protocol_version"] = client.protocol_version
            tools = await client.list_tools()
            report["tools"] = sorted(t.name for t in tools.tools)
            result = await client.call_tool("get_user", {"name": "bob"})
            report["get_user"] = [c.text for c in result.content if getattr(c, "text", None)]
            result = await client.call_tool("get_region", {"region": "eu-north1"})
            report["get_region"] = [c.text for c in result.content if getattr(c, "text", None)]
            result = await client.call_tool("whoami", {})
            report["whoami"] = [c.text for c in result.content if getattr(c, "text", None)]
            try:
                result = await client.call_tool("delete_user", {"name": "bob"})
                report["delete_user"] = [c.text for c in result.content if getattr(c, "text", None)]
            except Exception as error:  # the refusal surfaces as whatever the SDK raises for a 403
                report["delete_user_error"] = f"{type(error).__name__}: {error}"
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))))
