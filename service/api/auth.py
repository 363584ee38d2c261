"""Authentication: API keys (`Authorization: Bearer KEY`) resolved to the tenant of the request.

With AUTH=on every /v1 request needs a key of a tenant; the tenant owns what
the request creates and is the only one who sees it (service/api/common.py,
get_or_404). With AUTH=off (the embedded `make run` mode, on 127.0.0.1) nothing
is authenticated and everything belongs to tenant `default`. Routes outside
/v1 (health, metrics, the OpenAPI document, the dashboard's page shells and
static files) never need a key. Keys themselves are made and looked up in
service/core/tenancy/keys.py.
"""

from __future__ import annotations

import logging

import click
from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.tables import DEFAULT_TENANT
from service.core.problems import ApiError
from service.core.tenancy.keys import CREATE_HINT, KeyCache, any_key, hash_key, tenant_of_key

log = logging.getLogger(__name__)


def unauthorized(message: str, invalid_token: bool = False) -> ApiError:
    """Return the 401 problem, with the WWW-Authenticate challenge of RFC 6750."""
    challenge = 'Bearer realm="backprop"' + (', error="invalid_token"' if invalid_token else "")
    return ApiError(401, "Unauthorized", message, [{"field": "Authorization", "message": message}],
                    slug="unauthorized", headers={"WWW-Authenticate": challenge})


def authenticate(app: Flask, header: str | None) -> str:
    """Return the tenant of a request with this Authorization header, or raise the 401 problem.

    The one place a key is checked: the Flask hook below and /predict's fast lane
    (service/api/models.py) both call it.
    """
    if app.config["AUTH"] == "off":
        return DEFAULT_TENANT
    if not header:
        raise unauthorized(f"this request needs an API key: send 'Authorization: Bearer KEY' "
                           f"(an operator creates keys with `{CREATE_HINT}`)")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        raise unauthorized("the Authorization header must be 'Bearer KEY'", invalid_token=True)
    sessions: sessionmaker[Session] = app.extensions["backprop.sessions"]

    def lookup() -> str | None:
        with sessions() as session:
            return tenant_of_key(session, key)

    tenant = app.extensions["backprop.keys"].tenant(hash_key(key), lookup)
    if tenant is None:
        raise unauthorized("the API key is not known or has been revoked", invalid_token=True)
    return tenant


def needs_key(path: str) -> bool:
    """Say whether a path is under /v1, where every request is a tenant's."""
    return path == "/v1" or path.startswith("/v1/")


def current_tenant() -> str:
    """Return the tenant of the current request."""
    tenant = g.get("tenant")
    if tenant is None:
        # Only /v1 requests have a tenant: a route elsewhere that reads a tenant's data is a bug.
        raise RuntimeError(f"no tenant for {request.path}: tenant data is served under /v1 only")
    return tenant


def _startup_notes(app: Flask) -> None:
    """Log how requests are authenticated, and how to create the first key when none exists."""
    if click.get_current_context(silent=True) is not None:
        return  # a `flask ...` command (db upgrade, keys create) is not a server starting
    if app.config["AUTH"] == "off":
        log.warning("AUTH=off: requests are not authenticated; every resource belongs to tenant %r. "
                    "Serve on 127.0.0.1 only (as `make run` does).", DEFAULT_TENANT)
        return
    try:
        with app.extensions["backprop.sessions"]() as session:
            has_key = any_key(session)
    except Exception as error:  # not migrated yet: the first request will say what is wrong
        log.debug("could not count API keys: %r", error)
        return
    if not has_key:
        log.warning("AUTH=on and no API key exists yet: every /v1 request will get 401. Create one with "
                    "`%s` (docker compose run --rm api %s)", CREATE_HINT, CREATE_HINT)


def init_app(app: Flask) -> None:
    """Resolve the tenant of every /v1 request."""
    # AUTH and KEY_CACHE_TTL_S were validated with the other settings (service/core/settings.py).
    app.extensions["backprop.keys"] = KeyCache(app.config["KEY_CACHE_TTL_S"])

    @app.before_request
    def _resolve_tenant() -> None:
        if needs_key(request.path):
            g.tenant = authenticate(current_app._get_current_object(),  # type: ignore[attr-defined]
                                    request.headers.get("Authorization"))

    if not app.config.get("TESTING"):
        _startup_notes(app)

