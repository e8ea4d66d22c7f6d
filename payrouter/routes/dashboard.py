"""``/dashboard``: the operator's live page, its JSON data, and the login that opens it.

Routes (mounted only when the service config sets ``[dashboard] token_env``; otherwise 404):

- ``GET /dashboard``: the page; without a valid session or bearer token, 401 with a login form.
- ``POST /dashboard/login``: form field ``token``; on success a session cookie and 303 to the page.
- ``POST /dashboard/logout``: clears the cookie.
- ``GET /dashboard/data?window=1h|6h|24h|7d``: everything the page draws, as JSON (401 without
  authorization). Scripts use ``Authorization: Bearer <token>``.
- ``GET /dashboard/assets/{name}``: the page's script and style sheet (no secrets: not gated).

See `payrouter.dashboard.auth` for why the token is exchanged for a cookie by a form post,
never accepted in a URL.
"""

from __future__ import annotations

import html
from importlib import resources
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from payrouter.dashboard.auth import COOKIE, DashboardAuth
from payrouter.dashboard.data import dashboard_data
from payrouter.dashboard.history import WINDOWS, HistoryCache
from payrouter.http_errors import error_response
from payrouter.settings import DashboardSettings

__all__ = ["DEFAULT_WINDOW", "dashboard_routes"]

DEFAULT_WINDOW = "6h"
_PATH = "/dashboard"
_MAX_FORM_BYTES = 4096
_ASSET_TYPES = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# the page runs only its own script, talks only to its own origin, and cannot be framed
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _asset(name: str) -> str:
    return (resources.files("payrouter.dashboard") / "assets" / name).read_text(encoding="utf-8")


def _over_https(request: Request) -> bool:
    # behind a TLS-terminating proxy the request itself may look like plain http: the service's
    # public_url says how browsers reach it
    public_url: str | None = request.state.services.public_url
    return request.url.scheme == "https" or (public_url or "").startswith("https://")


def dashboard_routes(config: DashboardSettings) -> list[BaseRoute]:
    """The dashboard's routes for ``config`` (none without a token).

    Args:
        config: the ``[dashboard]`` settings.
    """
    if config.token is None:
        return []
    auth = DashboardAuth(config.token.get_secret_value())
    page = _asset("dashboard.html").replace("{{refresh_ms}}", str(int(config.refresh_seconds * 1000)))
    page = page.replace("{{default_window}}", DEFAULT_WINDOW)
    login_page = _asset("login.html")
    assets = {name: _asset(name) for name in _ASSET_TYPES}
    cache = HistoryCache(config.max_records)

    def authorized(request: Request) -> bool:
        return auth.bearer_ok(request.headers.get("authorization")) or auth.session_ok(request.cookies.get(COOKIE))

    def login(message: str = "", status: int = 401) -> HTMLResponse:
        text = login_page.replace("{{message}}", html.escape(message))
        headers = {**_SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="payrouter dashboard"'}
        return HTMLResponse(text, status, headers=headers)

    async def show(request: Request) -> Response:
        if not authorized(request):
            return login()
        return HTMLResponse(page, headers=_SECURITY_HEADERS)

    async def data(request: Request) -> Response:
        if not authorized(request):
            return error_response(401, "dashboard: missing or wrong token", "authentication_error")
        name = request.query_params.get("window", DEFAULT_WINDOW)
        window = WINDOWS.get(name)
        if window is None:
            return error_response(400, f"window must be one of {sorted(WINDOWS)}", "invalid_request_error", "window")
        doc = await dashboard_data(request.state.services, window, cache)
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    async def log_in(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin not in (None, "null") and origin != f"{request.url.scheme}://{request.url.netloc}":
            return login("This form must be posted from the dashboard's own page.", 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return login("The form is too large.", 413)
        token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not auth.token_ok(token):
            return login("Wrong token.")
        response = RedirectResponse(_PATH, 303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            COOKIE,
            auth.new_session(),
            max_age=auth.session_seconds,
            path=_PATH,
            secure=_over_https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    async def log_out(request: Request) -> Response:
        response = RedirectResponse(_PATH, 303, headers={"Cache-Control": "no-store"})
        response.delete_cookie(COOKIE, path=_PATH, httponly=True, samesite="strict")
        return response

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return error_response(404, "no such asset", "invalid_request_error")
        return Response(assets[name], media_type=_ASSET_TYPES[name], headers={"X-Content-Type-Options": "nosniff"})

    return [
        Route(_PATH, show, methods=["GET"]),
        Route(_PATH + "/data", data, methods=["GET"]),
        Route(_PATH + "/login", log_in, methods=["POST"]),
        Route(_PATH + "/logout", log_out, methods=["POST"]),
        Route(_PATH + "/assets/{name}", asset, methods=["GET"]),
    ]
