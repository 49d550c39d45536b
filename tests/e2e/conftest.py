"""Fixtures of the end-to-end tests: the real `mcp-authz local` binary on a copy of the quickstart manifests
(plus a second service, so tokens can be tried across services), the demo MCP server on the official SDK, the
agent's metadata document on an HTTPS host with a test CA, and helpers that drive the official SDK client.

Needs (exported by tests/setup/*.sh and tests/suites/e2e.sh):
  MCP_AUTHZ_LOCAL_BIN  the mcp-authz binary (built by tests/suites/e2e.sh)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "quickstart"))

from mcp_authz_demo.cimd_host import CimdHost  # noqa: E402
from mcp_authz_demo.plane import MANIFESTS, LocalPlane, free_port, generated_ca_dir, notes_server, wait_for_port  # noqa: E402

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
def upstream_port(work_dir: Path):
    port = free_port()
    child = notes_server(port, work_dir / "notes-server.log").start()
    wait_for_port(port, 30, child.process)
    yield port
    child.stop()


@pytest.fixture(scope="session")
def manifests_dir(work_dir: Path, upstream_port: int) -> Path:
    """The quickstart manifests with the demo server's port, plus a second service `archive`."""
    target = work_dir / "manifests"
    shutil.copytree(MANIFESTS, target)
    service = target / "notes-service.yaml"
    service.write_text(service.read_text().replace("port: 8000", f"port: {upstream_port}"))
    (target / "archive-service.yaml").write_text(SECOND_SERVICE.replace("UPSTREAM_PORT", str(upstream_port)))
    # Registration on, for the clients that have no metadata document (test_registration.py); spec is the
    # manifest's last key, so its fields can be appended.
    server = target / "authorization-server.yaml"
    server.write_text(server.read_text().rstrip("\n") + "\n  dynamicClientRegistration:\n    enabled: true\n")
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
