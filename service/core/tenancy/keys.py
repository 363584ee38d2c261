"""API keys and the tenants they act for: creation, lookup by hash, and a per-process cache.

Keys are 32 random bytes behind a prefix; the database keeps only their sha256,
which is enough for keys that cannot be guessed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from service.core.db.tables import ApiKey, Tenant
from service.core.ids import new_id

KEY_PREFIX = "bp_"
# A tenant's name is its id: short, printable, safe in a log line and a URL.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_CACHE_MAX = 10_000
CREATE_HINT = "flask --app service keys create --tenant NAME"


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

    def __init__(self, ttl_s: float, max_entries: int = KEY_CACHE_MAX) -> None:
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
