#!/usr/bin/env python3
"""The audit stream on a real node: the kubelet's container logs (CRI format, `TIME STREAM TAG LINE`) of the
injected sidecar and of the authorization server hold audit records of schema `mcp-authz.audit/v1` on `stdout`
and nothing else there, and JSON log lines on `stderr` (what a node's log shipper splits on, README "Audit
stream"). After the probes before it: the sidecar let a tool call through and refused one (insufficient_scope), the
server issued a token through a code grant.

    audit_probe.py POD_LOGS_DIR NAMESPACE
"""

import json
import sys
from pathlib import Path


def container_lines(pod_logs: Path, namespace: str, container: str) -> list[tuple[str, str]]:
    """(stream, line) of every log file of `container` in pods of `namespace`, partial lines joined."""
    found = []
    for log in sorted(pod_logs.glob(f"{namespace}_*/{container}/*.log")):
        partial = {"stdout": "", "stderr": ""}
        for raw in log.read_text(encoding="utf-8").splitlines():
            _time, stream, tag, line = raw.split(" ", 3)
            if tag == "P":
                partial[stream] += line
                continue
            found.append((stream, partial[stream] + line))
            partial[stream] = ""
    return found


def records_of(pod_logs: Path, namespace: str, container: str) -> list[dict]:
    lines = container_lines(pod_logs, namespace, container)
    if not lines:
        sys.exit(f"audit_probe: no log lines of the {container} containers in {namespace}")
    records = []
    for stream, line in lines:
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            sys.exit(f"audit_probe: a {container} line on {stream} that is not JSON: {line!r}")
        is_record = parsed.get("schema") == "mcp-authz.audit/v1"
        if (stream == "stdout") != is_record:
            sys.exit(f"audit_probe: {container} wrote on {stream}: {line!r}")
        if is_record:
            records.append(parsed)
    return records


def expect(records: list[dict], what: str, **fields) -> None:
    if not any(all(r.get(k) == v for k, v in fields.items()) for r in records):
        sys.exit(f"audit_probe: no record of {what} ({fields}) among {len(records)}: {records[-5:]}")


def main() -> None:
    pod_logs, namespace = Path(sys.argv[1]), sys.argv[2]
    sidecar = records_of(pod_logs, namespace, "mcp-authz-sidecar")
    expect(sidecar, "an allowed tool call", source="sidecar", event="mcp", method="tools/call", outcome="allow", reason="ok")
    expect(sidecar, "a refused tool call", source="sidecar", method="tools/call", outcome="deny", reason="insufficient_scope")
    if not all(r["service"].startswith("https://") for r in sidecar):
        sys.exit(f"audit_probe: a sidecar record without its service: {sidecar}")
    server = records_of(pod_logs, namespace, "authserver")
    expect(server, "a token issued by a code grant", source="authserver", event="token", outcome="allow", action="issued",
           reason="authorization_code")
    print(f"audit_probe: {len(sidecar)} sidecar and {len(server)} server records on stdout, logs on stderr")


if __name__ == "__main__":
    main()
