"""The agent's Client ID Metadata Document, published over HTTPS the way a real agent vendor publishes it.

The authorization server fetches it when the agent first uses its URL as `client_id`; every fetch is recorded
so the walkthrough can show it and the tests can assert it.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .tls import ServerCertificate


@dataclass
class Fetch:
    """One GET the host answered."""

    path: str
    status: int
    user_agent: str | None


@dataclass
class CimdHost:
    """An HTTPS server (on 127.0.0.1 unless told) serving JSON documents by path."""

    certificate: ServerCertificate
    hostname: str = "localhost"
    # The address it listens on: loopback, or (for an authorization server in a pod) the node's bridge address.
    bind: str = "127.0.0.1"
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetches: list[Fetch] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "CimdHost is not started"
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        """The https URL of `path` on this host."""
        return f"https://{self.hostname}:{self.port}{path}"

    def publish(self, path: str, document: dict[str, Any]) -> str:
        """Serves `document` at `path` and returns its URL."""
        self.documents[path] = document
        return self.url(path)

    def fetches_of(self, path: str) -> list[Fetch]:
        return [f for f in self.fetches if f.path == path]

    def start(self, port: int = 0) -> "CimdHost":
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                document = host.documents.get(self.path)
                status = 200 if document is not None else 404
                host.fetches.append(Fetch(self.path, status, self.headers.get("User-Agent")))
                body = json.dumps(document if document is not None else {"error": "not found"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=60")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
                pass

        server = ThreadingHTTPServer((self.bind, port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate.cert_pem, self.certificate.key_pem)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="cimd-host", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def agent_document(client_id: str, redirect_uri: str, client_name: str = "Quickstart agent") -> dict[str, Any]:
    """A public native client's metadata document (draft-ietf-oauth-client-id-metadata-document)."""
    return {
        "client_id": client_id,
        "client_name": client_name,
        "client_uri": client_id.rsplit("/", 1)[0] + "/",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    }


def ca_configmap_manifest(name: str, key: str, ca_pem: Path) -> str:
    """The ConfigMap a CIMDPolicy's `trustedCaBundle` names, holding the test CA (YAML text)."""
    pem = ca_pem.read_text()
    indented = "".join(f"    {line}\n" for line in pem.splitlines())
    return (
        "# Written at run time: the CA of the agent's metadata host, trusted by the quickstart CIMD policy.\n"
        "apiVersion: v1\nkind: ConfigMap\n"
        f"metadata:\n  name: {name}\n"
        f"data:\n  {key}: |\n{indented}"
    )
