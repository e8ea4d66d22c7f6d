"""Who gets the dashboard: 404 when it is off, 401 without the token, a cookie only by a form post."""

from __future__ import annotations

import time

import httpx
import pytest

from payrouter.dashboard.auth import COOKIE, DashboardAuth
from payrouter.sandbox.dev import Sandbox

from .conftest import Served

PATHS = ("/dashboard", "/dashboard/data", "/dashboard/assets/dashboard.js")


def test_no_token_configured_means_no_routes(box: Sandbox) -> None:
    # the sandbox's own router has no [dashboard] token_env
    for path in PATHS:
        assert httpx.get(box.router_url + path).status_code == 404, path
    assert httpx.post(box.router_url + "/dashboard/login", data={"token": "x" * 40}).status_code == 404


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-wrong-token-wrong", "Basic abc", "Bearer"])
def test_data_refused_without_the_token(served: Served, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(served.url + "/dashboard/data", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert served.token not in response.text


def test_page_without_token_is_a_login_form(served: Served) -> None:
    response = httpx.get(served.url + "/dashboard")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert '<form method="post" action="/dashboard/login"' in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


def test_bearer_token_opens_page_and_data(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    page = httpx.get(served.url + "/dashboard", headers=headers)
    assert page.status_code == 200 and 'data-panel="canary"' in page.text
    assert httpx.get(served.url + "/dashboard/data", headers=headers).status_code == 200
    assert httpx.get(served.url + "/dashboard/data?window=2h", headers=headers).status_code == 400


def test_login_form_sets_a_strict_http_only_cookie(served: Served) -> None:
    with httpx.Client(base_url=served.url) as client:
        wrong = client.post("/dashboard/login", data={"token": served.token[:-1] + "x"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text and COOKIE not in wrong.cookies
        response = client.post("/dashboard/login", data={"token": served.token})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        cookie = response.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/dashboard" in cookie.lower()
        assert served.token not in cookie  # the cookie is a signed expiry, not the token
        assert client.get("/dashboard").status_code == 200
        assert client.get("/dashboard/data").status_code == 200
        out = client.post("/dashboard/logout")
        assert out.status_code == 303
        assert client.get("/dashboard/data").status_code == 401


def test_cookie_is_secure_behind_a_tls_proxy(served: Served) -> None:
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1 (a local TLS-terminating proxy)
    plain = httpx.post(served.url + "/dashboard/login", data={"token": served.token})
    assert "secure" not in [p.strip().lower() for p in plain.headers["set-cookie"].split(";")]
    proxied = httpx.post(
        served.url + "/dashboard/login", data={"token": served.token}, headers={"X-Forwarded-Proto": "https"}
    )
    assert proxied.status_code == 303
    assert "secure" in [p.strip().lower() for p in proxied.headers["set-cookie"].split(";")]


def test_login_from_another_origin_is_refused(served: Served) -> None:
    response = httpx.post(
        served.url + "/dashboard/login", data={"token": served.token}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_forged_and_expired_sessions_are_refused(served: Served) -> None:
    other = DashboardAuth("another-token-another-token-another")
    expired = DashboardAuth(served.token, session_seconds=-1).new_session()
    for value in (other.new_session(), expired, "9999999999.00", "garbage", ""):
        response = httpx.get(served.url + "/dashboard/data", cookies={COOKIE: value})
        assert response.status_code == 401, value
    good = DashboardAuth(served.token).new_session()
    assert httpx.get(served.url + "/dashboard/data", cookies={COOKIE: good}).status_code == 200


def test_session_checks() -> None:
    auth = DashboardAuth("t" * 30, session_seconds=60)
    now = time.time()
    session = auth.new_session(now)
    assert auth.session_ok(session, now + 59) and not auth.session_ok(session, now + 61)
    expiry, signature = session.split(".")
    assert not auth.session_ok(f"{int(expiry) + 1000}.{signature}", now)  # a longer expiry is not signed
    assert auth.token_ok("t" * 30) and not auth.token_ok("t" * 29) and not auth.token_ok("")
    assert auth.bearer_ok("bearer " + "t" * 30) and not auth.bearer_ok("t" * 30) and not auth.bearer_ok(None)
    assert "t" * 30 not in repr(auth)
