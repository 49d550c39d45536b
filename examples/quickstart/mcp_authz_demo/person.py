"""A person, without a browser: follows the authorization URL, fills the login form and answers the consent
form exactly as the HTML asks (every hidden field, the CSRF token included, is sent back as served), and stops
at the redirect back to the agent, whose query carries the code (or the error)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2

MAX_HOPS = 12


@dataclass
class Form:
    """One HTML form: where it posts and the fields a browser would send."""

    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    # Submit controls: (name, value) pairs of buttons and submit inputs.
    submits: list[tuple[str, str]] = field(default_factory=list)
    has_password: bool = False


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag in ("script", "style", "title"):
            self._skip += 1
        elif tag == "form":
            self.forms.append(Form(action=a.get("action", ""), method=a.get("method", "get").lower()))
        elif tag in ("input", "button", "textarea", "select") and self.forms:
            form = self.forms[-1]
            name = a.get("name")
            kind = a.get("type", "submit" if tag == "button" else "text").lower()
            if kind == "password":
                form.has_password = True
            if not name:
                return
            if kind == "submit":
                form.submits.append((name, a.get("value", "")))
            elif kind in ("checkbox", "radio"):
                if "checked" in a:
                    form.fields[name] = a.get("value", "on")
            else:
                form.fields[name] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.text.append(data.strip())


def parse_page(html: str) -> tuple[list[Form], str]:
    """The forms of a page and its visible text (one space between pieces)."""
    parser = _FormParser()
    parser.feed(html)
    return parser.forms, re.sub(r"\s+", " ", " ".join(parser.text))


@dataclass
class PageSeen:
    """A page the person was shown."""

    kind: str  # "login", "consent" or "other"
    url: str
    status: int
    text: str


@dataclass
class AuthorizationOutcome:
    """Where the authorization server sent the person back to, and what it said there."""

    redirect: str
    params: dict[str, str]
    pages: list[PageSeen]

    @property
    def code(self) -> str | None:
        return self.params.get("code")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


class AuthorizationFailed(Exception):
    """The authorization server answered with a page instead of sending the person back (e.g. a refusal)."""

    def __init__(self, message: str, pages: list[PageSeen]) -> None:
        super().__init__(message)
        self.pages = pages


@dataclass
class HeadlessPerson:
    """Someone who logs in as `username` and answers consent with `decision` (`approve` or `deny`)."""

    username: str
    password: str
    decision: str = "approve"
    # Called with each page as it is shown (the walkthrough prints it).
    on_page: object = None
    client: httpx2.AsyncClient = field(default_factory=lambda: httpx2.AsyncClient(timeout=15.0))

    async def authorize(self, authorization_url: str, redirect_uri: str) -> AuthorizationOutcome:
        pages: list[PageSeen] = []
        url, method, data = authorization_url, "GET", None
        for _ in range(MAX_HOPS):
            response = await self.client.request(method, url, data=data, follow_redirects=False)
            if response.is_redirect:
                location = urljoin(url, response.headers["location"])
                if _same_endpoint(location, redirect_uri):
                    query = {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}
                    return AuthorizationOutcome(location, query, pages)
                url, method, data = location, "GET", None
                continue
            forms, text = parse_page(response.text)
            form = next((f for f in forms if f.method == "post"), None)
            kind = "login" if form and form.has_password else "consent" if form and _decision_values(form) else "other"
            page = PageSeen(kind, url, response.status_code, text)
            pages.append(page)
            if callable(self.on_page):
                self.on_page(page)
            # A third-party provider's own pages on the way (connecting it from our consent page): its sign-in and
            # its consent, a form of its own host that asks nothing of ours.
            third_party = form is not None and urlparse(urljoin(url, form.action or url)).netloc != urlparse(authorization_url).netloc
            if form is None or (kind == "other" and not third_party):
                raise AuthorizationFailed(f"the authorization server answered {response.status_code}: {text[:400]}", pages)
            data = dict(form.fields)
            if kind == "login":
                data["username"], data["password"] = self.username, self.password
                if third_party:
                    data["login"] = self.username
                data.update(form.submits[:1])
            elif kind == "other":
                data.update(form.submits[:1])
            else:
                if self.decision not in _decision_values(form):
                    raise AuthorizationFailed(f"consent form offers no {self.decision!r} decision", pages)
                data["decision"] = self.decision
            url, method = urljoin(url, form.action or url), "POST"
        raise AuthorizationFailed(f"no redirect back to the agent after {MAX_HOPS} pages", pages)


def _decision_values(form: Form) -> set[str]:
    values = {v for n, v in form.submits if n == "decision"}
    if "decision" in form.fields:
        values.add(form.fields["decision"])
    return values


def _same_endpoint(location: str, redirect_uri: str) -> bool:
    a, b = urlparse(location), urlparse(redirect_uri)
    return (a.scheme, a.hostname, a.port, a.path) == (b.scheme, b.hostname, b.port, b.path)
