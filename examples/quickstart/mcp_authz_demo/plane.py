"""Starting and stopping the real programs: `mcp-authz local` and the demo MCP server, as child processes
with their output in log files, waited for over their sockets and stopped with the signal Ctrl-C sends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cimd_host import ca_configmap_manifest
from .tls import ServerCertificate, make_server_certificate

QUICKSTART = Path(__file__).resolve().parent.parent
MANIFESTS = QUICKSTART / "manifests"
NOTES_SERVER = QUICKSTART / "notes_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Child:
    """One child process and its log file."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> "Child":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 15.0) -> int | None:
        """Sends SIGINT (what Ctrl-C sends), then SIGKILL after `grace` seconds."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        self.process = None
        return code

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` (connections left in TIME_WAIT do not count, as for any server
    that sets SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def notes_server(port: int, log: Path, inventory_url: str | None = None, acme_url: str | None = None) -> Child:
    """The demo MCP server on `port`; refuses to start (rather than talk to a stranger) when the port is taken.
    `inventory_url`: the downstream API its `inventory_lookup` tool calls as the person; `acme_url`: the provider
    whose userinfo its `acme_profile` tool reads with the person's own token there."""
    if not port_is_free(port):
        raise RuntimeError(
            f"port {port} (the MCPService's upstream.port) is already taken by another program: stop it, or change "
            f"upstream.port in the manifest"
        )
    command = [sys.executable, str(NOTES_SERVER), "--port", str(port)]
    if inventory_url:
        command += ["--inventory-url", inventory_url]
    if acme_url:
        command += ["--acme-url", acme_url]
    return Child("notes server", command, log)


@dataclass
class LocalPlane:
    """`mcp-authz local -f DIR...` with a state directory and a ready file."""

    binary: Path
    dirs: list[Path]
    state_dir: Path
    work_dir: Path
    child: Child | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def ready_file(self) -> Path:
        return self.work_dir / "ready.json"

    def start(self, timeout: float = 120.0) -> dict[str, Any]:
        self.ready_file.unlink(missing_ok=True)
        argv = [str(self.binary), "local", "--state-dir", str(self.state_dir), "--ready-file", str(self.ready_file)]
        for d in self.dirs:
            argv += ["-f", str(d)]
        self.child = Child("mcp-authz local", argv, self.work_dir / "local.log").start(
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")}
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if not self.child.running():
                raise RuntimeError(f"mcp-authz local exited:\n{self.child.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mcp-authz local not ready after {timeout} s:\n{self.child.tail()}")
            time.sleep(0.1)
        self.ready = json.loads(self.ready_file.read_text())
        return self.ready

    def wait_for_ready_change(self, previous_mtime: float, timeout: float = 30.0) -> dict[str, Any]:
        """The ready file as rewritten after a manifest change."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists() and self.ready_file.stat().st_mtime > previous_mtime:
                self.ready = json.loads(self.ready_file.read_text())
                return self.ready
            time.sleep(0.1)
        raise TimeoutError(f"ready file not rewritten after {timeout} s:\n{self.child.tail() if self.child else ''}")

    def stop(self) -> int | None:
        return self.child.stop() if self.child else None

    def admin_token(self) -> str:
        return Path(self.ready["admin"]["tokenFile"]).read_text().strip()

    def service(self, name: str) -> dict[str, str]:
        return self.ready["services"][name]


def generated_ca_dir(work_dir: Path) -> tuple[ServerCertificate, Path]:
    """A fresh test CA and a localhost certificate for the agent's metadata host, and a directory holding
    the ConfigMap (`quickstart-ca`) that the quickstart CIMDPolicy's trustedCaBundle names."""
    cert = make_server_certificate(work_dir / "tls", ["localhost", "127.0.0.1"])
    generated = work_dir / "generated"
    generated.mkdir(parents=True, exist_ok=True)
    (generated / "quickstart-ca.yaml").write_text(ca_configmap_manifest("quickstart-ca", "ca.pem", cert.ca_pem))
    return cert, generated
