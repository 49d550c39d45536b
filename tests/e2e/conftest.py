"""Fixtures of the end-to-end tests: the real `mcp-authz local` binary on a copy of the quickstart manifests
(plus a second service, so tokens can be tried across services, and a declared enterprise client with the identity
provider it trusts), the demo MCP server on the official SDK, the
agent's metadata document on an HTTPS host with a test CA, and helpers that drive the official SDK client.

Needs (exported by tests/setup/*.sh and tests/suites/e2e.sh):
  MCP_AUTHZ_LOCAL_BIN  the mcp-authz binary (built by tests/suites/e2e.sh)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import base64
import json
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "quickstart"))

from mcp_authz_demo.cimd_host import CimdHost  # noqa: E402
from mcp_authz_demo.plane import MANIFESTS, LocalPlane, free_port, generated_ca_dir, notes_server, wait_for_port  # noqa: E402

from inventory_api import AUDIENCE as INVENTORY_AUDIENCE, InventoryApi  # noqa: E402

ARTIFACTS = REPO / "tests" / "artifacts"

SECOND_SERVICE = """
apiVersion: mcp-authz.io/v1alpha1
kind: MCPService
metadata:
  name: archive
spec:
  selector: {app: archive}
  resourceUrl: https://mcp.quickstart.example/archive
  authorizationServerRef: {name: quickstart}
  upstream: {port: UPSTREAM_PORT, path: /mcp}
  scopes: [notes:read]
  rules:
    - methods: ["tools/call"]
      names: ["list_notes", "read_note", "whoami"]
      scopes: ["notes:read"]
"""

# A third service on the same demo server whose rules tell people from machine clients (`callers`): whoami is for
# machines only, read_note for people only, whatever the scopes (test_machine_clients.py).
CALLERS_SERVICE = """
apiVersion: mcp-authz.io/v1alpha1
kind: MCPService
metadata:
  name: reports
spec:
  selector: {app: reports}
  resourceUrl: https://mcp.quickstart.example/reports
  authorizationServerRef: {name: quickstart}
  upstream: {port: UPSTREAM_PORT, path: /mcp}
  scopes: [notes:read]
  rules:
    - methods: ["tools/call"]
      names: ["whoami"]
      scopes: ["notes:read"]
      callers: Machines
    - methods: ["tools/call"]
      names: ["read_note"]
      scopes: ["notes:read"]
      callers: People
    - methods: ["tools/call"]
      names: ["*"]
      scopes: ["notes:read"]
"""

# A fourth service on the demo server whose person's own account at the Acme provider (a real npm oidc-provider,
# tests/authserver/oidc-third-party.mjs) its sidecar hands on (test_provider.py). A service of its own, so that
# connecting Acme on the consent page touches no other test's sign-in.
TRACKER_SERVICE = """
apiVersion: mcp-authz.io/v1alpha1
kind: MCPService
metadata:
  name: tracker
spec:
  selector: {app: tracker}
  resourceUrl: https://mcp.quickstart.example/tracker
  authorizationServerRef: {name: quickstart}
  upstream: {port: UPSTREAM_PORT, path: /mcp}
  scopes: [notes:read]
  rules:
    - methods: ["tools/call"]
      names: ["acme_profile", "whoami"]
      scopes: ["notes:read"]
"""

ACME_CLIENT = "mcp-authz-connect"
ACME_SECRET = "third-party-secret-0123456789abcdef"


def acme_provider(port: int) -> dict:
    return {
        "id": "acme", "displayName": "Acme", "issuer": f"http://127.0.0.1:{port}", "clientId": ACME_CLIENT,
        "clientSecretRef": {"name": "acme-oauth", "key": "secret"}, "scopes": ["openid", "api:read"],
        "services": [{"name": "tracker"}], "header": "x-acme-token",
    }


ENTERPRISE_IDP = "https://idp.corp.example"
ENTERPRISE_AGENT = "enterprise-agent"
ENTERPRISE_SECRET = "enterprise-agent-secret-0123456789abcdef"

ENTERPRISE_AGENT_MANIFESTS = f"""
apiVersion: v1
kind: Secret
metadata:
  name: enterprise-agent
type: Opaque
stringData:
  secret: {ENTERPRISE_SECRET}
---
apiVersion: mcp-authz.io/v1alpha1
kind: MCPClient
metadata:
  name: enterprise-agent
spec:
  authorizationServer: quickstart
  clientId: {ENTERPRISE_AGENT}
  clientName: Enterprise agent
  tokenEndpointAuthMethod: client_secret_post
  clientSecretRef: {{name: enterprise-agent, key: secret}}
  grantTypes: [jwt_bearer]
"""


INVENTORY_EDGE = {"from": {"name": "notes"}, "audience": INVENTORY_AUDIENCE, "scopes": ["notes:read"], "header": "x-inventory-token"}

MACHINE_CLIENT = "nightly-report"
MACHINE_SECRET_CLIENT = "ci-job"
MACHINE_SECRET = "ci-job-secret-0123456789abcdef-0123456789"


class MachineKey:
    """The key a headless agent signs its client assertions with; the MCPClient declares its public half."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "nightly-report-1"

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {"kty": "EC", "crv": "P-256", "x": _b64url(numbers.x), "y": _b64url(numbers.y), "kid": self.kid, "alg": "ES256", "use": "sig"}
            ]
        }

    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def machine_client_manifests(key: MachineKey) -> str:
    """Two headless agents declared by the platform team: one proving itself with a key (the recommended way),
    one with a client secret; both get notes:read and nothing else without a person."""
    return f"""
apiVersion: mcp-authz.io/v1alpha1
kind: MCPClient
metadata:
  name: nightly-report
spec:
  authorizationServer: quickstart
  clientId: {MACHINE_CLIENT}
  clientName: Nightly report
  tokenEndpointAuthMethod: private_key_jwt
  jwks: {json.dumps(key.jwks())}
  grantTypes: [client_credentials]
  scopes: [notes:read]
---
apiVersion: v1
kind: Secret
metadata:
  name: ci-job
type: Opaque
stringData:
  secret: {MACHINE_SECRET}
---
apiVersion: mcp-authz.io/v1alpha1
kind: MCPClient
metadata:
  name: ci-job
spec:
  authorizationServer: quickstart
  clientId: {MACHINE_SECRET_CLIENT}
  clientName: CI job
  tokenEndpointAuthMethod: client_secret_basic
  clientSecretRef: {{name: ci-job, key: secret}}
  grantTypes: [client_credentials]
  scopes: [notes:read]
"""


def _b64url(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


class EnterpriseIdp:
    """The company's identity provider, as far as this plane sees it: an ES256 key the AuthorizationServer trusts
    and ID-JAGs signed with it (PyJWT). `stranger_id_jag` signs as a provider nobody trusts."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.stranger = ec.generate_private_key(ec.SECP256R1())
        self.kid = "corp-idp-1"

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {"kty": "EC", "crv": "P-256", "x": _b64url(numbers.x), "y": _b64url(numbers.y), "kid": self.kid, "alg": "ES256", "use": "sig"}
            ]
        }

    def id_jag(self, *, audience: str, resource: str, scope: str, iat: int | None = None, exp: int | None = None,
               issuer: str = ENTERPRISE_IDP, key=None) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": "employee-42",
            "aud": audience,
            "resource": resource,
            "client_id": ENTERPRISE_AGENT,
            "scope": scope,
            "jti": str(uuid.uuid4()),
            "iat": now if iat is None else iat,
            "exp": now + 300 if exp is None else exp,
        }
        headers = {"typ": "oauth-id-jag+jwt", "kid": self.kid}
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers=headers)

    def stranger_id_jag(self, **kwargs) -> str:
        return self.id_jag(issuer="https://stranger.example", key=self.stranger, **kwargs)


def required_env(name: str, setup: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests through tests/run-all ({setup} exports it)", pytrace=False)
    return value


@pytest.fixture(scope="session")
def binary() -> Path:
    path = Path(required_env("MCP_AUTHZ_LOCAL_BIN", "tests/suites/e2e.sh"))
    if not path.is_file():
        pytest.fail(f"MCP_AUTHZ_LOCAL_BIN={path} does not exist", pytrace=False)
    return path


@pytest.fixture(scope="session")
def work_dir() -> Path:
    path = REPO / "tests" / ".work" / f"e2e-{int(time.time())}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def inventory() -> InventoryApi:
    api = InventoryApi()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def acme_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def acme(plane, acme_port: int, work_dir: Path):
    """The Acme provider, started once the plane's local issuer (and so its connect callback) is known."""
    node = required_env("MCP_AUTHZ_NODE22", "tests/setup/40-node.sh")
    required_env("MCP_AUTHZ_OIDC_PROVIDER_MODULES", "tests/setup/40-node.sh")
    callback = f"{plane.ready['issuer']}/connect/acme/callback"
    script = REPO / "tests" / "authserver" / "oidc-third-party.mjs"
    log = open(work_dir / "acme.log", "wb")
    # Acme's access tokens live 30 s: too short for the sidecar to keep one, so every call asks the server anew and a
    # disconnect shows at the very next call (a longer-lived one is reused by the sidecar until 30 s before its end).
    child = subprocess.Popen([node, str(script), str(acme_port), callback, "30", "true"], stdout=log, stderr=log)
    try:
        wait_for_port(acme_port, 30, child)
        yield f"http://127.0.0.1:{acme_port}"
    finally:
        child.terminate()
        child.wait(10)
        log.close()


@pytest.fixture(scope="session")
def upstream_port(work_dir: Path, inventory: InventoryApi, acme_port: int):
    port = free_port()
    child = notes_server(
        port, work_dir / "notes-server.log", inventory_url=inventory.url, acme_url=f"http://127.0.0.1:{acme_port}"
    ).start()
    wait_for_port(port, 30, child.process)
    yield port
    child.stop()


@pytest.fixture(scope="session")
def enterprise_idp() -> EnterpriseIdp:
    return EnterpriseIdp()


@pytest.fixture(scope="session")
def machine_key() -> MachineKey:
    return MachineKey()


@pytest.fixture(scope="session")
def manifests_dir(
    work_dir: Path, upstream_port: int, enterprise_idp: EnterpriseIdp, machine_key: MachineKey, acme_port: int
) -> Path:
    """The quickstart manifests with the demo server's port, plus a second service `archive` and a third, `reports`."""
    target = work_dir / "manifests"
    shutil.copytree(MANIFESTS, target)
    service = target / "notes-service.yaml"
    # The demo server's inventory_lookup tool, opened to readers (it calls the inventory API as the person).
    inventory_rule = '    - methods: ["tools/call"]\n      names: ["inventory_lookup"]\n      scopes: ["notes:read"]\n'
    text = service.read_text().replace("port: 8000", f"port: {upstream_port}")
    service.write_text(text.replace("  defaultDecision: Deny", inventory_rule + "  defaultDecision: Deny"))
    (target / "archive-service.yaml").write_text(SECOND_SERVICE.replace("UPSTREAM_PORT", str(upstream_port)))
    (target / "reports-service.yaml").write_text(CALLERS_SERVICE.replace("UPSTREAM_PORT", str(upstream_port)))
    (target / "tracker-service.yaml").write_text(TRACKER_SERVICE.replace("UPSTREAM_PORT", str(upstream_port)))
    (target / "acme-secret.yaml").write_text(
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: acme-oauth}}\nstringData: {{secret: {ACME_SECRET}}}\n"
    )
    # Registration on, for the clients that have no metadata document (test_registration.py); spec is the
    # manifest's last key, so its fields can be appended.
    server = target / "authorization-server.yaml"
    # And the company's identity provider, trusted to speak for the declared enterprise agent (test_enterprise.py).
    trusted = json.dumps([{"issuer": ENTERPRISE_IDP, "jwks": enterprise_idp.jwks(), "clients": [ENTERPRISE_AGENT]}])
    server.write_text(
        server.read_text().rstrip("\n")
        + "\n  dynamicClientRegistration:\n    enabled: true\n"
        + f"  trustedIdentityProviders: {trusted}\n"
        # The notes service may call the inventory API as the person (test_downstream.py).
        + f"  tokenExchange: {json.dumps([INVENTORY_EDGE])}\n"
        # The tracker service receives the person's own Acme token (test_provider.py).
        + f"  providers: {json.dumps([acme_provider(acme_port)])}\n"
    )
    (target / "enterprise-agent.yaml").write_text(ENTERPRISE_AGENT_MANIFESTS)
    (target / "machine-clients.yaml").write_text(machine_client_manifests(machine_key))
    return target


@pytest.fixture(scope="session")
def certificate_and_ca_dir(work_dir: Path):
    return generated_ca_dir(work_dir)


@pytest.fixture(scope="session")
def cimd_host(certificate_and_ca_dir):
    host = CimdHost(certificate_and_ca_dir[0]).start()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def plane(binary: Path, work_dir: Path, manifests_dir: Path, certificate_and_ca_dir) -> LocalPlane:
    plane = LocalPlane(binary, [manifests_dir, certificate_and_ca_dir[1]], work_dir / "state", work_dir)
    plane.start()
    yield plane
    code = plane.stop()
    assert code == 0, f"mcp-authz local did not stop cleanly on Ctrl-C (exit {code}):\n{plane.child.tail() if plane.child else ''}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
