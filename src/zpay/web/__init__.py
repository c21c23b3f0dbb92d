"""zpay's own web pages: server-rendered HTML (Jinja) and small ES modules, no CDN, no build.

`web_handlers()` lists the route handlers the app mounts; `template_config()` tells Litestar
where the templates are. Pages call the same services as the API, with the same tenancy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

WEB_DIR = Path(__file__).parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine)


def web_handlers() -> list[Any]:
    """Every page and the static assets. Page modules add their controllers here."""
    from zpay.web.approval import ApprovalPageController
    from zpay.web.dashboard import dashboard_router
    from zpay.web.user import user_handlers

    return [
        ApprovalPageController,
        dashboard_router(),
        *user_handlers(),
        create_static_files_router(path="/static", directories=[STATIC_DIR],
                                   include_in_schema=False, name="static"),
    ]
