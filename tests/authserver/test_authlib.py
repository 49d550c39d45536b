"""A real third-party OAuth client (Authlib, pinned in tests/requirements.txt) against the real server binary.

The server runs as a subprocess on loopback with SQLite and self-managed keys. The browser part (login and consent
forms) is scripted with requests, exactly as a person without JavaScript would submit them.
"""

import json
import os
import re
import socket
import subprocess
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, RSAKey, jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT

RESOURCE = "https://mcp.example.com/files"
REDIRECT = "http://127.0.0.1/callback"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = os.environ.get("MCP_AUTHZ_SERVER_BIN")
    assert binary, "MCP_AUTHZ_SERVER_BIN is not set: run tests/suites/authserver-authlib.sh"
    work = tmp_path_factory.mktemp("authserver")
    password_hash = subprocess.run(
        [binary, "hash-password"], input="wonderland\n", capture_output=True, text=True, check=True
    ).stdout.strip()
    service_key = RSAKey.generate_key(2048, is_private=True)
    public = service_key.as_dict(is_private=False)
    public.update({"kid": "service-1", "alg": "RS256", "use": "sig"})
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
        "resources": [{"resource": RESOURCE, "displayName": "Files", "scopes": ["files:read", "files:write"]}],
        "login": {"static": {"users": [{"username": "alice", "passwordHash": password_hash}]}},
        "clients": [
            {"clientId": "authlib-cli", "clientName": "Authlib CLI", "redirectUris": [REDIRECT]},
            {
                "clientId": "authlib-service",
                "clientName": "Authlib service",
                "tokenEndpointAuthMethod": "private_key_jwt",
                "jwks": {"keys": [public]},
                "grantTypes": ["client_credentials"],
                "scopes": ["files:read"],
            },
        ],
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
    yield {"issuer": issuer, "service_key": service_key, "admin": f"http://127.0.0.1:{admin_port}"}
    proc.terminate()
    proc.wait(timeout=10)


def metadata(issuer):
    m = requests.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    assert m["issuer"] == issuer
    return m


def hidden(html, name):
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, html
    return found.group(1)


def browser_approves(authorization_url, issuer):
    """Follows the login and consent forms like a browser; returns the redirect back to the client."""
    browser = requests.Session()
    page = browser.get(authorization_url, allow_redirects=False)
    assert page.status_code == 200, page.text
    assert 'name="password"' in page.text
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
    assert "Read your files" in page.text and "Authlib CLI" in page.text
    done = browser.post(
        f"{issuer}/consent",
        data={"request_id": hidden(page.text, "request_id"), "csrf": hidden(page.text, "csrf"), "decision": "approve"},
        allow_redirects=False,
    )
    assert done.status_code == 303, done.text
    return done.headers["location"]


def verify(token, issuer):
    jwks = JsonWebKey.import_key_set(requests.get(f"{issuer}/jwks").json())
    claims = jwt.decode(token, jwks)
    claims.validate()
    return claims


def test_authorization_code_with_pkce_then_refresh(server):
    issuer = server["issuer"]
    m = metadata(issuer)
    assert m["code_challenge_methods_supported"] == ["S256"]
    client = OAuth2Session(
        "authlib-cli",
        redirect_uri=REDIRECT,
        scope="files:read files:write",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(48)
    url, state = client.create_authorization_url(
        m["authorization_endpoint"], code_verifier=verifier, resource=RESOURCE
    )
    callback = browser_approves(url, issuer)
    query = parse_qs(urlparse(callback).query)
    assert query["iss"] == [issuer]
    assert query["state"] == [state]
    token = client.fetch_token(
        m["token_endpoint"], authorization_response=callback, code_verifier=verifier, resource=RESOURCE
    )
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "files:read files:write"
    claims = verify(token["access_token"], issuer)
    assert claims["aud"] == RESOURCE
    assert claims["sub"] == "alice"
    assert claims["client_id"] == "authlib-cli"
    first_refresh = token["refresh_token"]
    refreshed = client.refresh_token(m["token_endpoint"], refresh_token=first_refresh)
    assert refreshed["refresh_token"] != first_refresh
    assert verify(refreshed["access_token"], issuer)["sub"] == "alice"
    # Reusing the rotated refresh token is refused and revokes the grant.
    reuse = requests.post(
        m["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": first_refresh, "client_id": "authlib-cli"},
    )
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    dead = requests.post(
        m["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"], "client_id": "authlib-cli"},
    )
    assert dead.json()["error"] == "invalid_grant"


def test_client_credentials_with_private_key_jwt(server):
    issuer = server["issuer"]
    m = metadata(issuer)
    assert "private_key_jwt" in m["token_endpoint_auth_methods_supported"]
    session = OAuth2Session(
        "authlib-service",
        server["service_key"].as_pem(is_private=True).decode(),
        token_endpoint_auth_method="private_key_jwt",
    )
    session.register_client_auth_method(PrivateKeyJWT(m["token_endpoint"], headers={"kid": "service-1"}))
    token = session.fetch_token(m["token_endpoint"], grant_type="client_credentials", resource=RESOURCE)
    claims = verify(token["access_token"], issuer)
    assert claims["sub"] == "authlib-service"
    assert claims["aud"] == RESOURCE
    assert claims["scope"] == "files:read"
    assert "refresh_token" not in token


def test_refusals_are_oauth_errors(server):
    issuer = server["issuer"]
    m = metadata(issuer)
    client = OAuth2Session("authlib-cli", redirect_uri=REDIRECT, scope="files:read", token_endpoint_auth_method="none")
    # No PKCE: refused with a redirect that carries iss.
    url, state = client.create_authorization_url(m["authorization_endpoint"], resource=RESOURCE)
    r = requests.get(url, allow_redirects=False)
    assert r.status_code == 303
    q = parse_qs(urlparse(r.headers["location"]).query)
    assert q["error"] == ["invalid_request"] and q["iss"] == [issuer] and q["state"] == [state]
    # An unknown resource.
    client = OAuth2Session(
        "authlib-cli", redirect_uri=REDIRECT, scope="files:read", code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    url, _ = client.create_authorization_url(
        m["authorization_endpoint"], code_verifier=generate_token(48), resource="https://elsewhere.example/"
    )
    # An unknown resource names no policy that could vouch for the redirect URI (RFC 9700 §4.11.2): a page, not a
    # redirect.
    r = requests.get(url, allow_redirects=False)
    assert r.status_code == 400 and "location" not in r.headers
    assert 'data-error="invalid_target"' in r.text
    assert "resource &quot;https://elsewhere.example/&quot; is not a resource of this server" in r.text
