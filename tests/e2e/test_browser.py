"""The login and consent pages in a real headless browser (Debian's Chromium through chromedriver): a person's
path through them, screenshots kept under tests/artifacts/, and the consent page showing the client's host, the
redirect host and each scope's description."""

from __future__ import annotations

import base64
import hashlib
import secrets
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from conftest import required_env
from flows import publish_agent
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1100,900",
]


@pytest.fixture
def browser():
    chromium = required_env("MCP_AUTHZ_CHROMIUM", "tests/setup/50-chromium.sh")
    chromedriver = required_env("MCP_AUTHZ_CHROMEDRIVER", "tests/setup/50-chromium.sh")
    with tempfile.TemporaryDirectory(prefix="mcp-authz-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in FLAGS + [f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def callback_listener():
    """The agent's loopback redirect listener (RFC 8252), as a native app runs it."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            received.append(self.path)
            body = b"<html><body><h1>Signed in</h1><p>You can close this window.</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/callback", received
    server.shutdown()
    server.server_close()


def open_consent(plane, cimd_host, browser, artifacts, redirect_uri: str):
    """Logs in through the real login form and stops at the consent page; returns (approve button, state)."""
    url, issuer = plane.service("notes")["url"], plane.ready["issuer"]
    client_id, _ = publish_agent(
        cimd_host, "/agents/browser-agent.json", {"client_name": "Browser agent", "redirect_uris": [redirect_uri]}
    )
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = secrets.token_urlsafe(16)
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
        "scope": "notes:read notes:write", "resource": url, "state": state,
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    wait = WebDriverWait(browser, 20)
    browser.get(f"{issuer}/authorize?{query}")
    password = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")))
    browser.save_screenshot(str(artifacts / "login.png"))
    browser.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("demo")
    password.send_keys("demo-password")
    password.submit()
    approve = wait.until(expected_conditions.presence_of_element_located(
        (By.CSS_SELECTOR, "button[name=decision][value=approve], input[name=decision][value=approve]")))
    browser.save_screenshot(str(artifacts / "consent.png"))
    return approve, state, client_id


def test_login_and_consent_pages_in_a_real_browser(plane, cimd_host, browser, artifacts, callback_listener):
    redirect_uri, _ = callback_listener
    _, _, client_id = open_consent(plane, cimd_host, browser, artifacts, redirect_uri)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Browser agent" in text, text
    assert urlparse(client_id).hostname in text, f"the client_id host must be shown: {text}"
    assert urlparse(redirect_uri).hostname in text, f"the redirect host must be shown: {text}"
    for description in ("Read your notes", "Create and delete your notes"):
        assert description in text, f"scope description {description!r} missing: {text}"
    # The notes service may call the inventory API as the person (the platform's tokenExchange edge): said here.
    downstreams = browser.find_element(By.ID, "downstreams").text
    assert downstreams == "https://inventory.quickstart.example/api with notes:read", downstreams
    for name in ("login.png", "consent.png"):
        assert (artifacts / name).stat().st_size > 5000, f"{name} looks empty"


def test_approving_in_a_real_browser_sends_the_person_back_with_a_code(
    plane, cimd_host, browser, artifacts, callback_listener
):
    redirect_uri, received = callback_listener
    approve, state, _ = open_consent(plane, cimd_host, browser, artifacts, redirect_uri)
    approve.click()
    try:
        WebDriverWait(browser, 10).until(lambda d: d.current_url.startswith(redirect_uri))
    except Exception:
        browser.save_screenshot(str(artifacts / "after-consent.png"))
        console = [entry.get("message", "") for entry in browser.get_log("browser")]
        raise AssertionError(
            f"not sent back to {redirect_uri}: at {browser.current_url}, listener got {received}; console: {console}"
        ) from None
    browser.save_screenshot(str(artifacts / "after-consent.png"))
    assert "Signed in" in browser.find_element(By.TAG_NAME, "body").text
    callbacks = [path for path in received if path.startswith("/callback?")]
    assert len(callbacks) == 1, received
    back = parse_qs(urlparse(callbacks[0]).query)
    assert back.get("state") == [state], callbacks
    assert back.get("code"), callbacks
    assert back.get("iss") == [plane.ready["issuer"]], callbacks
