#!/usr/bin/env python3
"""An MCP client's first two requests, from the host to the sidecar the webhook injected (MCP_URL): an
`initialize` without a token must meet 401 with a Bearer challenge naming the protected-resource metadata
(RFC 9728), and that metadata, asked of the same sidecar, must name the MCPService's resource URL and its
authorization server. Standard library only; exits non-zero with the reason on any difference."""

import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

RESOURCE = os.environ.get("MCP_RESOURCE", "https://mcp.quickstart.example/mcp")
ISSUER = os.environ.get("MCP_ISSUER", "https://auth.quickstart.example")


def fail(message):
    sys.exit(f"mcp_probe: {message}")


def main():
    url = os.environ["MCP_URL"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "mcp-authz-node-e2e", "version": "0"},
        },
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(initialize).encode(),
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            fail(f"initialize without a token got {response.status}, expected 401")
    except urllib.error.HTTPError as error:
        if error.code != 401:
            fail(f"initialize without a token got {error.code}, expected 401: {error.read()[:300]!r}")
        challenge = error.headers.get("WWW-Authenticate", "")
    if not challenge.startswith("Bearer "):
        fail(f"no Bearer challenge: {challenge!r}")
    match = re.search(r'resource_metadata="([^"]+)"', challenge)
    if not match:
        fail(f"the challenge names no resource_metadata: {challenge!r}")
    # The challenge names the public URL (the resource's host); ask the same path of the sidecar itself.
    metadata_path = urllib.parse.urlsplit(match.group(1)).path
    sidecar = urllib.parse.urlsplit(url)
    metadata_url = f"{sidecar.scheme}://{sidecar.netloc}{metadata_path}"
    with urllib.request.urlopen(metadata_url, timeout=10) as response:
        metadata = json.load(response)
    if metadata.get("resource") != RESOURCE:
        fail(f"metadata names resource {metadata.get('resource')!r}, expected {RESOURCE!r}")
    if ISSUER not in metadata.get("authorization_servers", []):
        fail(f"metadata names authorization servers {metadata.get('authorization_servers')!r}, expected {ISSUER!r}")
    print(f"mcp_probe: 401 with {challenge!r}; {metadata_url} names {RESOURCE} and {ISSUER}", file=sys.stderr)


if __name__ == "__main__":
    main()
