"""Dashboard pages, their JSON, the static assets and ``/metrics``, on the control plane.

=====  ===============================  =========================================
GET    /dashboard/login                 the login form (an admin API token)
POST   /dashboard/login                 token -> HttpOnly, SameSite=Strict cookie
POST   /dashboard/logout                clears it
GET    /dashboard/                      overview: health, TEE, attestation, pools
GET    /dashboard/models                accuracy vs latency per task, frontier
GET    /dashboard/traffic               live requests/s, p50/p99, SLO attainment
GET    /dashboard/autoscaler            replicas per variant, decisions
GET    /dashboard/tenants               tenants and the models that served them
GET    /dashboard/api/{page}            each page's data (JSON, polled every 2 s)
GET    /dashboard/static/{file}         own JS/CSS; plotly.js from the installed package
GET    /metrics                         Prometheus text format
=====  ===============================  =========================================

Pages and data need an administrator: the session cookie, or an
``Authorization: Bearer <admin token>`` header (for scripts and Prometheus).
Without one, a page redirects to the login form and data answers 401. Every
response forbids framing and caching and allows scripts from this origin only
(no CDN: the browser needs no network beyond the control plane).
"""

from __future__ import annotations

import asyncio
import html
import inspect
import math
import time
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Query, Request, Security
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from api.dashboard import views
from api.dashboard.metrics import create_registry
from api.dashboard.session import COOKIE, SESSION_S, Sessions
from api.deps import ControlPlane
from infaas.auth import Principal
from infaas.edge import BEARER, optional_bearer_token, problem_schema
from infaas.errors import AuthenticationFailed, InfaasError, PermissionDenied
from infaas.logs import get_logger
from infaas.telemetry.events import read_autoscaler_events
from infaas.telemetry.reader import TelemetryReader

log = get_logger(__name__)

HERE = Path(__file__).resolve().parent
PAGES: dict[str, str] = {
    "overview": "Overview",
    "models": "Models & variants",
    "traffic": "Live traffic",
    "autoscaler": "Autoscaler",
    "tenants": "Tenants",
}
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
SIMULATED_BANNER = (
    "SIMULATED TEE — NOT CONFIDENTIAL. Evidence is signed by a locally generated "
    "platform CA and keys are sealed with a key file this host can read: use SGX/TDX "
    "hardware for confidentiality."
)


@cache
def _template(name: str) -> Template:
    return Template((HERE / "templates" / name).read_text())


def plotly_js() -> Path:
    """plotly.js as the installed `plotly` package ships it."""
    path = Path(str(files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {path}")
    return path


def _secure(resp: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def _json(data: Any) -> Response:
    return _secure(JSONResponse(data))


class Dashboard:
    """The dashboard's parts for one control-plane app."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.sessions = Sessions(plane.store, plane.tokens)
        self.reader = TelemetryReader(plane.store)
        self.registry = create_registry(self.reader)
        self._health: tuple[float, str] = (-math.inf, "")

    # --- who is asking -----------------------------------------------------------------

    def admin(self, request: Request) -> Principal | None:
        principal = self.sessions.check(request.cookies.get(COOKIE))
        if principal is not None:
            return principal
        try:
            token = optional_bearer_token(request.headers.get("authorization"))
            p = self.plane.tokens.verify(token, "admin") if token else None
        except InfaasError:
            return None
        return p if p is not None and p.role == "admin" else None

    def require_admin(self, request: Request) -> Principal:
        principal = self.admin(request)
        if principal is None:
            if request.cookies.get(COOKIE) or request.headers.get("authorization"):
                raise PermissionDenied("this needs an administrator (log in again)")
            raise AuthenticationFailed("log in with an administrator's API token")
        return principal

    # --- pages -------------------------------------------------------------------------

    def page(self, request: Request, name: str, who: str) -> Response:
        base = request.scope.get("root_path", "").rstrip("/") + "/dashboard"
        nav = "".join(
            f'<a href="{base}/{"" if key == "overview" else key}"'
            f"{' aria-current=page' if key == name else ''}>{html.escape(title)}</a>"
            for key, title in PAGES.items()
        )
        simulated = self.plane.settings.tee_backend == "simulated"
        banner = (
            f'<div id="tee-banner" class="banner simulated" role="alert">'
            f"{html.escape(SIMULATED_BANNER)}</div>"
            if simulated
            else '<div id="tee-banner" class="banner hardware">TEE backend: '
            f"{html.escape(self.plane.settings.tee_backend)}</div>"
        )
        scripts = (
            f'<script src="{base}/static/plotly.min.js" defer></script>'
            if name in ("models", "traffic", "autoscaler")
            else ""
        )
        body = _template("layout.html").substitute(
            title=html.escape(PAGES[name]),
            page=name,
            base=base,
            nav=nav,
            banner=banner,
            scripts=scripts,
            who=html.escape(who),
            main=_template(f"{name}.html").substitute(base=base),
        )
        return _secure(Response(body, media_type="text/html; charset=utf-8"))

    def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        base = request.scope.get("root_path", "").rstrip("/") + "/dashboard"
        body = _template("login.html").substitute(
            base=base,
            error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "",
            simulated="simulated" if self.plane.settings.tee_backend == "simulated" else "hardware",
        )
        return _secure(Response(body, status_code=status, media_type="text/html; charset=utf-8"))

    # --- data --------------------------------------------------------------------------

    async def workers_health(self) -> str:
        """Whether the worker deployment answers through its handle (asked at most every 2 s,
        however many dashboards poll)."""
        now = time.monotonic()
        if now - self._health[0] < 2.0:
            return self._health[1]
        status_fn = self.plane.worker_status
        if status_fn is None:
            health = "not deployed"
        else:
            try:
                status = status_fn()
                if inspect.isawaitable(status):
                    status = await asyncio.wait_for(status, timeout=3.0)
                health = "ready" if isinstance(status, Mapping) else "unknown"
            except Exception as e:
                health = f"unavailable ({type(e).__name__})"
        self._health = (time.monotonic(), health)
        return health

    def data(self, name: str, window_s: float) -> dict[str, Any]:
        store = self.plane.store
        if name == "models":
            return views.models(store)
        view = self.reader.read()
        if name == "traffic":
            return views.traffic(view, window_s=window_s)
        if name == "autoscaler":
            events = read_autoscaler_events(store, since=view.at - window_s, limit=5000)
            return views.autoscaler(view, events, window_s=window_s)
        if name == "tenants":
            return views.tenants(store, view)
        raise KeyError(name)


def create_dashboard_router(dash: Dashboard) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/dashboard")
    def root(request: Request) -> Response:
        return RedirectResponse(str(request.url_for("dashboard_home")), 307)

    @router.get("/dashboard/login")
    def login_form(request: Request) -> Response:
        return dash.login_page(request)

    @router.post("/dashboard/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0].strip()
        try:
            principal, cookie = await run_in_threadpool(dash.sessions.login, token)
        except InfaasError as e:
            log.warning("dashboard login refused (%s)", e.code)
            return dash.login_page(request, "That is not an administrator's API token.", 401)
        log.info("dashboard login", extra={"tenant": principal.id})
        resp = RedirectResponse(str(request.url_for("dashboard_home")), 303)
        resp.set_cookie(
            COOKIE,
            cookie,
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return _secure(resp)

    @router.post("/dashboard/logout")
    def logout(request: Request) -> Response:
        resp = RedirectResponse(str(request.url_for("login_form")), 303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return _secure(resp)

    @router.get("/dashboard/static/{file}")
    def static(file: str) -> Response:
        if file == "plotly.min.js":
            resp: Response = FileResponse(plotly_js(), media_type="text/javascript")
        elif file in STATIC:
            resp = FileResponse(HERE / "static" / file, media_type=STATIC[file])
        else:
            return Response(status_code=404)
        resp.headers["Cache-Control"] = "private, max-age=3600"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    @router.get("/dashboard/api/overview")
    async def overview_data(request: Request) -> Response:
        await run_in_threadpool(dash.require_admin, request)  # reads the store
        health = await dash.workers_health()
        view = await run_in_threadpool(dash.reader.read)
        return _json(views.overview(dash.plane.settings, view, health))

    @router.get("/dashboard/api/{name}")
    def page_data(
        request: Request,
        name: str,
        window_s: Annotated[float, Query(ge=30, le=3600)] = 600.0,
    ) -> Response:
        dash.require_admin(request)
        if name not in PAGES:
            return _secure(Response(status_code=404))
        return _json(dash.data(name, window_s))

    def show(request: Request, name: str) -> Response:
        if name not in PAGES:
            return _secure(Response("no such page", status_code=404))
        principal = dash.admin(request)
        if principal is None:
            return _secure(RedirectResponse(str(request.url_for("login_form")), 303))
        return dash.page(request, name, principal.id)

    @router.get("/dashboard/", name="dashboard_home")
    def home(request: Request) -> Response:
        return show(request, "overview")

    @router.get("/dashboard/{name}")
    def page(request: Request, name: str) -> Response:
        return show(request, name)

    return router


def create_metrics_router(dash: Dashboard) -> APIRouter:
    """``GET /metrics``, in the OpenAPI document (the dashboard's pages are not: HTML)."""
    router = APIRouter(tags=["metrics"], responses={"default": problem_schema()})

    @router.get(
        "/metrics",
        summary="Prometheus metrics (admin, or a scraper's read-only token)",
        dependencies=[Security(BEARER)],
        response_class=Response,
        responses={
            200: {
                "description": "the Prometheus text exposition",
                "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            }
        },
    )
    def metrics(request: Request) -> Response:
        if dash.admin(request) is None:  # else a scraper's read-only token
            token = optional_bearer_token(request.headers.get("authorization"))
            dash.plane.tokens.verify(token, "metrics")
        return Response(generate_latest(dash.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def install_dashboard(app: FastAPI) -> Dashboard:
    """Add the dashboard and ``/metrics`` to a control-plane app made by `create_app`."""
    dash = Dashboard(app.state.plane)
    app.state.dashboard = dash
    app.include_router(create_dashboard_router(dash))
    app.include_router(create_metrics_router(dash))
    return dash
