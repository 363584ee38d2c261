"""Authentication: API keys (`Authorization: Bearer KEY`) resolved to the tenant of the request.

With AUTH=on every /v1 request needs a key of a tenant; the tenant owns what
the request creates and is the only one who sees it (service/api/common.py,
get_or_404). With AUTH=off (the embedded `make run` mode, on 127.0.0.1) nothing
is authenticated and everything belongs to tenant `default`. Routes outside
/v1 (health, metrics, the OpenAPI document, the dashboard's page shells and
static files) never need a key. Keys are 32 random bytes; the database keeps
only their sha256, which is enough for keys that cannot be guessed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable

import click
from flask import Flask, current_app, g, request
from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from service.errors import ApiError
from service.ids import new_id
from service.tables import DEFAULT_TENANT, ApiKey, Tenant

log = logging.getLogger(__name__)

KEY_PREFIX = "bp_"
# A tenant's name is its id: short, printable, safe in a log line and a URL.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# How long a key's tenant (or its absence) is remembered in a process: a revoked key
# keeps working for at most this long (docs/service.md).
KEY_CACHE_TTL_S = 10.0
KEY_CACHE_MAX = 10_000
CREATE_HINT = "flask --app service keys create --tenant NAME"


# --- keys ---------------------------------------------------------------------------------------


def new_key() -> str:
    """Return a new API key: a prefix (so it can be recognized in a leak) and 32 random bytes."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Return the sha256 hex digest of a key, as stored in api_keys.key_hash."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant_name(name: str) -> str:
    """Return the name if it can be a tenant's, else raise ValueError saying what it may be."""
    if not TENANT_NAME.fullmatch(name or ""):
        raise ValueError(f"a tenant name is 1 to 64 letters, digits, '_', '.' or '-', starting with a "
                         f"letter or digit, not {name!r}")
    return name


def ensure_tenant(session: Session, name: str) -> Tenant:
    """Return the tenant of this name, creating it when new (caller commits)."""
    tenant = session.get(Tenant, check_tenant_name(name))
    if tenant is None:
        tenant = Tenant(id=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant: str) -> tuple[ApiKey, str]:
    """Create a key for a tenant (and the tenant when new); return its row and the key (caller commits).

    The key itself is returned once and never stored.
    """
    ensure_tenant(session, tenant)
    key = new_key()
    row = ApiKey(id=new_id("key"), tenant_id=tenant, key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row, key


def tenant_of_key(session: Session, key: str) -> str | None:
    """Return the tenant of a key that exists and is not revoked, else None."""
    return session.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key),
                                                        ApiKey.revoked_at.is_(None)))


def any_key(session: Session) -> bool:
    """Say whether any key that is not revoked exists."""
    return bool(session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))


class KeyCache:
    """Remember each key hash's tenant (or that it has none) for `ttl_s` seconds.

    /predict must not pay a query per request for its key; the price is that a
    revoked key keeps working in a process for up to `ttl_s`.
    """

    def __init__(self, ttl_s: float = KEY_CACHE_TTL_S, max_entries: int = KEY_CACHE_MAX) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def tenant(self, key_hash: str, lookup: Callable[[], str | None]) -> str | None:
        """Return the cached tenant of a key hash, or look it up and remember it."""
        now = time.monotonic()
        entry = self._entries.get(key_hash)  # a dict read is atomic
        if entry is not None and entry[1] > now:
            return entry[0]
        tenant = lookup()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # unknown keys sent in bulk must not grow memory
            self._entries[key_hash] = (tenant, now + self.ttl_s)
        return tenant

    def clear(self) -> None:
        """Forget every key (after a revocation in this process)."""
        with self._lock:
            self._entries.clear()


# --- requests -----------------------------------------------------------------------------------


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
    """Resolve the tenant of every /v1 request, and register the `keys` and `tenants` commands."""
    from service import keys

    mode = str(app.config.get("AUTH", "on")).strip().lower()
    if mode not in ("on", "off"):
        raise ValueError(f"AUTH must be on or off, not {app.config.get('AUTH')!r}")
    app.config["AUTH"] = mode
    app.extensions["backprop.keys"] = KeyCache(float(app.config.get("KEY_CACHE_TTL_S", KEY_CACHE_TTL_S)))

    @app.before_request
    def _resolve_tenant() -> None:
        if needs_key(request.path):
            g.tenant = authenticate(current_app._get_current_object(),  # type: ignore[attr-defined]
                                    request.headers.get("Authorization"))

    keys.init_app(app)
    if not app.config.get("TESTING"):
        _startup_notes(app)

