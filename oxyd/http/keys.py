"""The keys under which the control port keeps shared objects, in a leaf module.

Handlers, middlewares and the app factory all import these; keeping them here (and not in the
factory) is what lets the factory import the handlers without an import circle.
"""

from __future__ import annotations

from aiohttp import web

from oxyd.app import App

APP: web.AppKey[App] = web.AppKey("oxyd_app", App)
# Set by the auth middleware: None for the admin, else the tenant id the token belongs to.
TOKEN_TENANT: web.RequestKey[str | None] = web.RequestKey("oxyd_token_tenant", str)
