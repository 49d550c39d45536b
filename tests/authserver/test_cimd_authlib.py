"""CIMD end to end: a real OAuth client library (Authlib) whose client_id is the https URL of its Client ID
Metadata Document completes authorization code + PKCE against the real server binary, and the same client is
refused, with a reason a person can read, by a resource whose policy does not admit it.

The document is served by a local HTTPS server with a certificate from a CA made for this run; the server's
CIMD config trusts that CA (extraCaBundle) and may fetch from 127.0.0.1 only (allowedPrivateCidrs).
"""

import datetime
import html
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, RSAKey, jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = "https://mcp.example.com/files"
PARTNERS_ONLY = "https://mcp.example.com/partners"
REDIRECT = "http://127.0.0.1/callback"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_ca_and_leaf(work):
    """A CA for this run and a server certificate for 127.0.0.1 signed by it; returns (ca.pem, cert, key) paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mcp-authz CIMD e2e CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client directory")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = work / "ca.pem", work / "doc.pem", work / "doc.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, cert_pem, key_pem


class DocumentServer:
    """Serves JSON documents by path over HTTPS and counts requests."""

    def __init__(self, cert, key):
        documents, hits = {}, {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits[self.path] = hits.get(self.path, 0) + 1
                body = documents.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("cache-control", "max-age=300")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.documents, self.hits = documents, hits
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"https://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    binary = os.environ.get("MCP_AUTHZ_SERVER_BIN")
    assert binary, "MCP_AUTHZ_SERVER_BIN is not set: run tests/suites/authserver-authlib.sh"
    work = tmp_path_factory.mktemp("cimd")
    ca_pem, cert_pem, key_pem = make_ca_and_leaf(work)
    docs = DocumentServer(str(cert_pem), str(key_pem))
    password_hash = subprocess.run(
        [binary, "hash-password"], input="wonderland\n", capture_output=True, text=True, check=True
    ).stdout.strip()
    port, admin_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = {
        "issuer": issuer,
        "listen": f"127.0.0.1:{port}",
        "adminListen": f"127.0.0.1:{admin_port}",
        "storage": {"sqlite": {"path": str(work / "as.db")}},
        "signing": {"keysDir": str(work / "keys"), "selfManaged": True},
        "scopes": [
            {"value": "files:read", "description": "Read your files"},
            {"value": "files:write", "description": "Change your files"},
        ],
        "resources": [
            {"resource": FILES, "displayName": "Files", "scopes": ["files:read", "files:write"]},
            {
                "resource": PARTNERS_ONLY,
                "displayName": "Partner tools",
                "scopes": ["files:read"],
                "cimdPolicy": "partners",
            },
        ],
        "login": {"static": {"users": [{"username": "alice", "passwordHash": password_hash}]}},
        "cimd": {
            "allowedPrivateCidrs": ["127.0.0.1/32"],
            "extraCaBundle": str(ca_pem),
            "policies": {
                "partners": {
                    "clientIdPatterns": ["https://*.agents.example.com/"],
                    "allowedAuthMethods": ["private_key_jwt"],
                }
            },
        },
    }
    (work / "config.json").write_text(json.dumps(config))
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        [binary, "--config", str(work / "config.json"), "--log-format", "text"], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert proc.poll() is None, (work / "server.log").read_text()
        assert time.time() < deadline, "server not ready in 30 s"
        time.sleep(0.1)
    yield {"issuer": issuer, "docs": docs, "log": work / "server.log"}
    proc.terminate()
    proc.wait(timeout=10)
    docs.stop()


def hidden(page, name):
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, page
    return found.group(1)


def publish_agent(docs, path):
    """The agent's Client ID Metadata Document; its client_id is the URL it is served at."""
    client_id = docs.url(path)
    docs.documents[path] = {
        "client_id": client_id,
        "client_name": "Authlib Agent",
        "client_uri": "https://agent.example.org/",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    return client_id


def test_a_cimd_client_completes_the_authorization_code_flow(setup):
    issuer, docs = setup["issuer"], setup["docs"]
    meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    assert meta["client_id_metadata_document_supported"] is True
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    client_id = publish_agent(docs, "/agents/authlib.json")

    client = OAuth2Session(
        client_id,
        redirect_uri=REDIRECT,
        scope="files:read",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(48)
    url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, resource=FILES)

    browser = requests.Session()
    page = browser.get(url, allow_redirects=False)
    assert page.status_code == 200, page.text
    page = browser.post(
        f"{issuer}/login",
        data={
            "request_id": hidden(page.text, "request_id"),
            "csrf": hidden(page.text, "csrf"),
            "username": "alice",
            "password": "wonderland",
        },
        allow_redirects=False,
    )
    assert page.status_code == 200, page.text
    # The consent page names the client, the client_id's host and the redirect's host.
    assert "Authlib Agent" in page.text
    assert "127.0.0.1" in page.text
    done = browser.post(
        f"{issuer}/consent",
        data={"request_id": hidden(page.text, "request_id"), "csrf": hidden(page.text, "csrf"), "decision": "approve"},
        allow_redirects=False,
    )
    assert done.status_code == 303, done.text
    callback = done.headers["location"]
    query = parse_qs(urlparse(callback).query)
    assert query["state"] == [state] and query["iss"] == [issuer]

    token = client.fetch_token(
        meta["token_endpoint"], authorization_response=callback, code_verifier=verifier, resource=FILES
    )
    claims = jwt.decode(token["access_token"], JsonWebKey.import_key_set(requests.get(f"{issuer}/jwks").json()))
    claims.validate()
    assert claims["aud"] == FILES
    assert claims["client_id"] == client_id
    assert claims["sub"] == "alice"
    assert token["scope"] == "files:read"
    # The document was fetched once for /authorize and /token together (it is cached).
    assert docs.hits["/agents/authlib.json"] == 1


def test_the_same_client_is_refused_where_the_policy_forbids_it(setup):
    issuer, docs = setup["issuer"], setup["docs"]
    meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    client_id = publish_agent(docs, "/agents/outsider.json")
    client = OAuth2Session(client_id, redirect_uri=REDIRECT, scope="files:read", code_challenge_method="S256")
    url, _ = client.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=generate_token(48), resource=PARTNERS_ONLY
    )
    page = requests.get(url, allow_redirects=False)
    # Never redirected to an unverified client: an error page for the person at the browser.
    assert page.status_code == 400, page.text
    assert "location" not in page.headers
    text = html.unescape(page.text)
    assert "invalid_client" in text
    assert (
        'policy "partners" refuses this client: the client_id matches none of the allowed patterns '
        '["https://*.agents.example.com/"]'
    ) in text
    # The policy decided from the client_id alone: nothing was fetched.
    assert docs.hits.get("/agents/outsider.json", 0) == 0
    # The same client is still admitted for the files service.
    url, _ = client.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=generate_token(48), resource=FILES
    )
    assert requests.get(url, allow_redirects=False).status_code == 200


def test_a_document_that_breaks_the_rules_is_refused_with_its_reason(setup):
    issuer, docs = setup["issuer"], setup["docs"]
    meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    client_id = publish_agent(docs, "/agents/secretive.json")
    docs.documents["/agents/secretive.json"]["client_secret"] = "hunter2"
    client = OAuth2Session(client_id, redirect_uri=REDIRECT, scope="files:read", code_challenge_method="S256")
    url, _ = client.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=generate_token(48), resource=FILES
    )
    page = requests.get(url, allow_redirects=False)
    assert page.status_code == 400, page.text
    assert "the client metadata document is invalid: it must not contain a client_secret" in html.unescape(page.text)
    # Invalid documents are not cached: fixed, the client gets in on the next try.
    del docs.documents["/agents/secretive.json"]["client_secret"]
    assert requests.get(url, allow_redirects=False).status_code == 200
    assert docs.hits["/agents/secretive.json"] == 2


def approve_in_browser(issuer, url):
    """Logs alice in and approves, like a person without JavaScript; returns the redirect back to the client."""
    browser = requests.Session()
    page = browser.get(url, allow_redirects=False)
    assert page.status_code == 200, page.text
    page = browser.post(
        f"{issuer}/login",
        data={
            "request_id": hidden(page.text, "request_id"),
            "csrf": hidden(page.text, "csrf"),
            "username": "alice",
            "password": "wonderland",
        },
        allow_redirects=False,
    )
    if page.status_code == 303:  # consent remembered from an earlier approval of the same client
        return page.headers["location"]
    assert page.status_code == 200, page.text
    done = browser.post(
        f"{issuer}/consent",
        data={"request_id": hidden(page.text, "request_id"), "csrf": hidden(page.text, "csrf"), "decision": "approve"},
        allow_redirects=False,
    )
    assert done.status_code == 303, done.text
    return done.headers["location"]


def test_a_confidential_cimd_client_signs_its_token_requests_with_keys_from_its_jwks_uri(setup):
    issuer, docs = setup["issuer"], setup["docs"]
    meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    key = RSAKey.generate_key(2048, is_private=True)
    public = key.as_dict(is_private=False)
    public.update({"kid": "agent-1", "alg": "RS256", "use": "sig"})
    docs.documents["/agents/confidential-jwks.json"] = {"keys": [public]}
    client_id = docs.url("/agents/confidential.json")
    docs.documents["/agents/confidential.json"] = {
        "client_id": client_id,
        "client_name": "Confidential Agent",
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks_uri": docs.url("/agents/confidential-jwks.json"),
    }
    client = OAuth2Session(
        client_id,
        key.as_pem(is_private=True),
        redirect_uri=REDIRECT,
        scope="files:read",
        code_challenge_method="S256",
        token_endpoint_auth_method="private_key_jwt",
    )
    client.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], headers={"kid": "agent-1"}))
    verifier = generate_token(48)
    url, _ = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, resource=FILES)
    callback = approve_in_browser(issuer, url)
    code = parse_qs(urlparse(callback).query)["code"][0]

    # Without its assertion the confidential client is refused, even holding a valid code and verifier.
    bare = requests.post(
        meta["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": client_id,
            "resource": FILES,
        },
    )
    assert bare.status_code in (400, 401), bare.text
    assert bare.json()["error"] == "invalid_client"

    # A fresh code, redeemed with a private_key_jwt assertion signed by the key published at jwks_uri.
    verifier = generate_token(48)
    url, _ = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, resource=FILES)
    callback = approve_in_browser(issuer, url)
    token = client.fetch_token(
        meta["token_endpoint"], authorization_response=callback, code_verifier=verifier, resource=FILES
    )
    claims = jwt.decode(token["access_token"], JsonWebKey.import_key_set(requests.get(f"{issuer}/jwks").json()))
    claims.validate()
    assert claims["client_id"] == client_id and claims["aud"] == FILES
    assert docs.hits["/agents/confidential-jwks.json"] >= 1
