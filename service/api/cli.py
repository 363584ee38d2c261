"""Operator commands: `flask --app service db ...`, `... keys ...` and `... tenants ...`.

    db upgrade [REVISION]         the schema to REVISION (head), and an SQLAlchemy broker's queues

    keys create --tenant NAME     a new key (and the tenant when new); the key alone on stdout
    keys list                     id, tenant, created, revoked; never a key
    keys revoke KEY_ID            the key stops working (within KEY_CACHE_TTL_S in running APIs)
    tenants list                  each tenant with its limits and keys
    tenants set-limits NAME [--max-jobs N] [--max-stored-mb M]
"""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from service.api.db import get_session
from service.core.db.engine import upgrade_database
from service.core.db.tables import ApiKey, Tenant
from service.core.ids import isoformat, utcnow
from service.core.jobs.publishing import prepare_broker
from service.core.tenancy.keys import check_tenant_name, create_key


def _tenant_name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_tenant_name(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


class LimitType(click.ParamType):
    """A limit: a positive integer, or `default` for the setting's value."""

    name = "N|default"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "default":
            return 0  # stored as NULL: the setting applies
        try:
            number = int(text)
        except ValueError:
            self.fail(f"must be a positive integer or 'default', not {value!r}", param, ctx)
        if number < 1:
            self.fail(f"must be a positive integer or 'default', not {value!r}", param, ctx)
        return number


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


db_cli = AppGroup("db", help="Manage the database schema.")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default head) and prepare an SQLAlchemy broker."""
    upgrade_database(current_app.config["DATABASE_URL"], revision)
    prepare_broker(current_app.config)
    click.echo(f"database upgraded to {revision}")


keys_cli = AppGroup("keys", help="Create, list and revoke API keys.")

@keys_cli.command("create")
@click.option("--tenant", required=True, callback=_tenant_name,
              help="The tenant the key acts for; created when new.")
def keys_create(tenant: str) -> None:
    """Create an API key and print it (shown this once only; stored as its sha256)."""
    with get_session() as session:
        row, key = create_key(session, tenant)
        session.commit()
    # The key alone on stdout, so that a script can capture it: KEY=$(flask ... keys create ...)
    click.echo(key)
    click.echo(f"created key {row.id} for tenant {tenant}; it is shown only this once: store it now. "
               f"Send it as 'Authorization: Bearer KEY' (the CLI: --api-key or BACKPROP_API_KEY).",
               err=True)

@keys_cli.command("list")
@click.option("--tenant", default=None, callback=_tenant_name, help="Only this tenant's keys.")
def keys_list(tenant: str | None) -> None:
    """List keys: id, tenant, created, revoked (the keys themselves are not stored)."""
    statement = select(ApiKey).order_by(ApiKey.tenant_id, ApiKey.id)
    if tenant:
        statement = statement.where(ApiKey.tenant_id == tenant)
    with get_session() as session:
        keys = list(session.scalars(statement))
    if not keys:
        click.echo("no keys", err=True)
        return
    _table([["ID", "TENANT", "CREATED", "REVOKED"]] + [
        [k.id, k.tenant_id, isoformat(k.created_at) or "", isoformat(k.revoked_at) or "-"] for k in keys])

@keys_cli.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (see `keys list`); running APIs stop taking it within 10 s."""
    with get_session() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            click.echo(f"error: no key with id {key_id!r} (see `keys list`)", err=True)
            sys.exit(1)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            session.commit()
    current_app.extensions["backprop.keys"].clear()  # this process at once; others within the TTL
    click.echo(f"revoked key {key_id} of tenant {key.tenant_id}")

tenants_cli = AppGroup("tenants", help="List tenants and set their limits.")

@tenants_cli.command("list")
def tenants_list() -> None:
    """List tenants with their limits (the setting's value where the tenant has none) and keys."""
    config = current_app.config
    with get_session() as session:
        counts = dict(session.execute(select(ApiKey.tenant_id, func.count()).where(
            ApiKey.revoked_at.is_(None)).group_by(ApiKey.tenant_id)).all())
        tenants = list(session.scalars(select(Tenant).order_by(Tenant.id)))
    rows = [["TENANT", "MAX_JOBS", "MAX_STORED_MB", "KEYS", "CREATED"]]
    for t in tenants:
        rows.append([t.id,
                     str(t.max_concurrent_jobs or f"{config['TENANT_MAX_CONCURRENT_JOBS']} (setting)"),
                     str(t.max_stored_mb or f"{config['TENANT_MAX_STORED_MB']} (setting)"),
                     str(counts.get(t.id, 0)), isoformat(t.created_at) or ""])
    _table(rows)

@tenants_cli.command("set-limits")
@click.argument("name", callback=_tenant_name)
@click.option("--max-jobs", type=LimitType(), default=None,
              help="Jobs queued or running at once ('default': TENANT_MAX_CONCURRENT_JOBS).")
@click.option("--max-stored-mb", type=LimitType(), default=None,
              help="MB of datasets and model weights ('default': TENANT_MAX_STORED_MB).")
def tenants_set_limits(name: str, max_jobs: int | None, max_stored_mb: int | None) -> None:
    """Override a tenant's limits (the tenant is created when new)."""
    if max_jobs is None and max_stored_mb is None:
        raise click.UsageError("give --max-jobs and/or --max-stored-mb")
    with get_session() as session:
        tenant = session.get(Tenant, name)
        if tenant is None:
            tenant = Tenant(id=name)
            session.add(tenant)
        if max_jobs is not None:
            tenant.max_concurrent_jobs = max_jobs or None
        if max_stored_mb is not None:
            tenant.max_stored_mb = max_stored_mb or None
        session.commit()
        jobs, stored = tenant.max_concurrent_jobs, tenant.max_stored_mb
    config = current_app.config
    click.echo(f"tenant {name}: max jobs {jobs or str(config['TENANT_MAX_CONCURRENT_JOBS']) + ' (setting)'}, "
               f"max stored {stored or str(config['TENANT_MAX_STORED_MB']) + ' (setting)'} MB")


def init_app(app: Flask) -> None:
    """Register the `db`, `keys` and `tenants` command groups."""
    for group in (db_cli, keys_cli, tenants_cli):
        app.cli.add_command(group)
