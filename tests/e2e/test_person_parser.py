"""The headless person's HTML form reading (pure logic, no servers)."""

from __future__ import annotations

from mcp_authz_demo.person import _decision_values, _same_endpoint, parse_page

LOGIN = """<html><head><title>Sign in</title><style>p{}</style></head><body>
<h1>Sign in</h1><form method="post" action="/login">
<input type="hidden" name="csrf" value="t0k&amp;en"><input type="hidden" name="request" value="r1">
<input name="username"><input type="password" name="password"><button type="submit">Sign in</button>
</form><script>var x = "not text";</script></body></html>"""

CONSENT = """<form method="POST" action="/consent"><input type="hidden" name="csrf" value="c">
<input type="checkbox" name="remember" value="yes" checked><input type="checkbox" name="other" value="no">
<button name="decision" value="approve">Allow</button><button name="decision" value="deny">Deny</button></form>"""


def test_a_login_form_keeps_hidden_fields_decoded_and_knows_its_password_field():
    forms, text = parse_page(LOGIN)
    assert len(forms) == 1
    form = forms[0]
    assert (form.action, form.method, form.has_password) == ("/login", "post", True)
    assert form.fields == {"csrf": "t0k&en", "request": "r1", "username": "", "password": ""}
    assert text == "Sign in Sign in", "title, style and script are not page text"


def test_a_consent_form_offers_its_decisions_and_only_checked_boxes():
    [form] = parse_page(CONSENT)[0]
    assert form.method == "post"
    assert _decision_values(form) == {"approve", "deny"}
    assert form.fields == {"csrf": "c", "remember": "yes"}


def test_the_redirect_back_is_recognised_by_scheme_host_port_and_path_only():
    redirect = "http://127.0.0.1:53682/callback"
    assert _same_endpoint("http://127.0.0.1:53682/callback?code=x&state=y", redirect)
    assert not _same_endpoint("http://127.0.0.1:53683/callback?code=x", redirect)
    assert not _same_endpoint("http://127.0.0.1:53682/other?code=x", redirect)
    assert not _same_endpoint("https://127.0.0.1:53682/callback", redirect)
