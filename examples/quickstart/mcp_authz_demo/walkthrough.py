"""The quickstart's main job: the plane in local mode on the quickstart manifests, the demo MCP server behind
it, and the official MCP SDK client walked through the whole flow, each step printed. Then the plane stays up
for the person to try their own client, until Ctrl-C.

    python -m mcp_authz_demo.walkthrough --binary PATH/mcp-authz [--work-dir DIR] [--once]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .agent import Agent
from .cimd_host import CimdHost, agent_document
from .grants import DEMO_PASSWORD, DEMO_USER, grant, seeded_storage
from .person import HeadlessPerson, PageSeen
from .plane import MANIFESTS, LocalPlane, generated_ca_dir, notes_server, wait_for_port

AGENT_PATH = "/agents/quickstart-agent.json"
READER_PATH = "/agents/quickstart-reader.json"


class Narrator:
    """Numbered steps on stdout, flushed at once (the person watches them arrive)."""

    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.count = 0
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.count += 1
        line = f"[{self.count:2d}] {text}"
        self.lines.append(line)
        print(line, file=self.out, flush=True)

    def heading(self, text: str) -> None:
        print(f"\n== {text}", file=self.out, flush=True)


@dataclass
class WalkResult:
    """What the walk saw, for the tests."""

    tools_listed: list[str] = field(default_factory=list)
    read_result: Any = None
    write_result: Any = None
    whoami: Any = None
    pages: list[PageSeen] = field(default_factory=list)
    # The least-privilege agent: what it listed with notes:read, the 403 challenge it met, and its result.
    reader_tools: list[str] = field(default_factory=list)
    step_up_challenge: str | None = None
    step_up_result: Any = None


def make_agent(mcp_url: str, host: CimdHost, say, path: str = AGENT_PATH, decision: str = "approve",
               redirect_port: int = 53682, document_overrides: dict[str, Any] | None = None, storage=None) -> Agent:
    """An agent whose metadata document is published on `host`; `document_overrides` changes the document."""
    redirect_uri = f"http://127.0.0.1:{redirect_port}/callback"
    client_id = host.url(path)
    document = agent_document(client_id, redirect_uri)
    document.update(document_overrides or {})
    host.publish(path, document)
    person = HeadlessPerson(DEMO_USER, DEMO_PASSWORD, decision=decision)
    kwargs = {"storage": storage} if storage is not None else {}
    agent = Agent(mcp_url=mcp_url, client_id_url=client_id, redirect_uri=redirect_uri, person=person, say=say, **kwargs)
    seen_fetches = {"count": len(host.fetches_of(path)), "pages": 0}
    on_page = person.on_page

    def page_with_fetches(page: PageSeen) -> None:
        fetches = host.fetches_of(path)
        for fetch in fetches[seen_fetches["count"]:]:
            say(
                f"the authorization server fetched the client's metadata document: GET {host.url(fetch.path)} -> "
                f"{fetch.status}; admitted by the CIMD policy (it shows the {page.kind} page)"
            )
        if len(fetches) == seen_fetches["count"] and page.kind == "login":
            say("the authorization server admitted the client from its cached copy of the metadata document")
        seen_fetches["count"] = len(fetches)
        on_page(page)

    person.on_page = page_with_fetches
    return agent


def _structured(result: Any) -> Any:
    return result.structured_content if result.structured_content is not None else [
        getattr(c, "text", c) for c in result.content
    ]


async def walk(mcp_url: str, issuer: str, host: CimdHost, say, heading) -> WalkResult:
    """The whole flow, as a person should see it: one agent from nothing (consenting to the basic scope
    only) to a sensitive call that steps up, then an agent holding only the read-only scope that meets a 403
    and steps up."""
    result = WalkResult()
    agent = make_agent(mcp_url, host, say)
    heading(f"An MCP client (the official Python SDK) connects to {mcp_url} with no token")
    async with agent.session() as session:
        heading("Connected. tools/list shows only what the token may call")
        tools = await session.list_tools()
        result.tools_listed = [t.name for t in tools.tools]
        say(f"tools/list -> {result.tools_listed}")

        heading("A read-only tool call")
        read = await session.call_tool("list_notes", {})
        result.read_result = _structured(read)
        say(f"tools/call list_notes -> allowed: {result.read_result}")

        heading("A sensitive tool call: 403 names notes:write, the SDK steps up, the person consents again")
        write = await session.call_tool("add_note", {"text": "my first note"})
        result.write_result = _structured(write)
        say(f"tools/call add_note -> {'error' if write.is_error else 'allowed'}: {result.write_result}")

        who = await session.call_tool("whoami", {})
        result.whoami = _structured(who)
        say(f"tools/call whoami -> the server saw identity headers, never the token: {result.whoami}")
    for outcome in agent.outcomes:
        result.pages.extend(outcome.pages)

    heading("Least privilege: an agent that was granted only notes:read earlier")
    earlier = await grant(issuer, mcp_url, "notes:read", host, READER_PATH)
    say(f"it holds a token with scope={earlier.token.get('scope')!r} (from an earlier consent)")
    reader = make_agent(mcp_url, host, say, path=READER_PATH, storage=seeded_storage(earlier))
    async with reader.session() as session:
        result.reader_tools = [t.name for t in (await session.list_tools()).tools]
        say(f"tools/list -> {result.reader_tools} (add_note and delete_note are hidden from this token)")
        heading("It calls add_note: 403 insufficient_scope names notes:write; the SDK steps up, the person consents")
        write = await session.call_tool("add_note", {"text": "written after step-up"})
        result.step_up_result = _structured(write)
        say(f"tools/call add_note -> {'error' if write.is_error else 'allowed after step-up'}: {result.step_up_result}")
    refusals = [e for e in reader.exchanges if e.url == mcp_url and e.status == 403]
    result.step_up_challenge = refusals[0].www_authenticate if refusals else None
    return result


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, required=True, help="the mcp-authz binary")
    parser.add_argument("--work-dir", type=Path, default=Path(".mcp-authz/quickstart"))
    parser.add_argument("--once", action="store_true", help="stop after the walk instead of waiting for Ctrl-C")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    say, heading = Narrator(), Narrator().heading

    cert, generated = generated_ca_dir(work)
    plane = LocalPlane(args.binary, [MANIFESTS, generated], work / "state", work)
    host = CimdHost(cert).start()
    notes = None
    try:
        heading("Starting the plane: mcp-authz local -f examples/quickstart/manifests")
        ready = plane.start()
        print(json.dumps(ready, indent=2), flush=True)
        service = plane.service("notes")
        upstream_port = int(service["upstream"].rsplit(":", 1)[1])
        notes = notes_server(upstream_port, work / "notes-server.log").start()
        wait_for_port(upstream_port, 30, notes.process)
        print(f"demo MCP server (official SDK) on {service['upstream']}; its agent's metadata document on "
              f"{host.url(AGENT_PATH)}", flush=True)

        result = anyio.run(walk, service["url"], ready["issuer"], host, say, heading)
        ok = bool(result.read_result is not None and result.write_result and result.whoami and result.step_up_result)
        heading("Done" if ok else "The walk did not finish as expected")
        print(
            f"The plane stays up. Point your own MCP client at {service['url']}\n"
            f"(issuer {ready['issuer']}, user {DEMO_USER} / {DEMO_PASSWORD}). Logs in {work}. Ctrl-C stops it.",
            flush=True,
        )
        if not args.once:
            _wait_for_ctrl_c()
        return 0 if ok else 1
    finally:
        if notes is not None:
            notes.stop()
        host.stop()
        code = plane.stop()
        print(f"stopped (mcp-authz local exited with {code})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
