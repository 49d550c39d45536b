"""A downstream API of the e2e tests that trusts the plane's tokens the way a real internal service would: it
verifies each bearer token with the authorization server's published keys (PyJWT), for its own audience only, and
answers who the token says is calling and through which service (`act`, RFC 8693). The MCP server reaches it with
the token the sidecar obtained by token exchange; the person's own token never leaves the sidecar."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

AUDIENCE = "https://inventory.quickstart.example/api"


class InventoryApi:
    def __init__(self) -> None:
        self.issuer: str | None = None
        # The only service trusted to act for people here; a token without that actor is refused.
        self.actor: str | None = None
        self.seen: list[dict] = []
        self.refused: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                claims, why = api.verify(self.headers.get("authorization", ""))
                if claims is None:
                    api.refused.append(why)
                    self.answer(401, {"error": "invalid_token", "error_description": why})
                    return
                api.seen.append(claims)
                self.answer(200, {k: claims.get(k) for k in ("sub", "client_id", "scope", "act", "aud", "mcp_authz_caller")})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verify(self, authorization: str) -> tuple[dict | None, str]:
        if not authorization.startswith("Bearer ") or self.issuer is None:
            return None, "no bearer token"
        token = authorization.removeprefix("Bearer ")
        try:
            if jwt.get_unverified_header(token).get("typ") != "at+jwt":
                return None, "not an access token"
            key = jwt.PyJWKClient(f"{self.issuer}/jwks").get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=AUDIENCE, issuer=self.issuer)
        except jwt.PyJWTError as error:
            return None, f"{type(error).__name__}: {error}"
        if "notes:read" not in claims.get("scope", "").split():
            return None, "notes:read is missing"
        if self.actor is None or (claims.get("act") or {}).get("sub") != self.actor:
            return None, "the token does not name a trusted service as its actor"
        return claims, ""

    def stop(self) -> None:
        self.server.shutdown()
