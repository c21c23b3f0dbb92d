"""The merchant dashboard under /dashboard: server-rendered, no JavaScript, one session
cookie. See docs/dashboard.md."""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from zpay.web.dashboard.login import DashboardLogin
from zpay.web.dashboard.pages import DashboardPages
from zpay.web.dashboard.session import EXCEPTION_HANDLERS, provide_identity


def dashboard_router() -> Router:
    return Router(path="/dashboard", route_handlers=[DashboardLogin, DashboardPages],
                  dependencies={"dash": Provide(provide_identity)},
                  exception_handlers=EXCEPTION_HANDLERS, include_in_schema=False)
