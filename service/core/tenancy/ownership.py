"""Who may see a row: its tenant only. Every lookup by id goes through here."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session


class TenantRow(Protocol):
    """A stored row that belongs to a tenant."""

    tenant_id: Any


Row = TypeVar("Row", bound=TenantRow)


def find_owned(session: Session, table: type[Row], row_id: str, tenant: str, **options: Any) -> Row | None:
    """Return the row of `table` with this id when it belongs to `tenant`, else None.

    Another tenant's row is as absent as a missing one, so a caller cannot tell them apart.
    """
    row = session.get(table, row_id, **options)
    if row is None or row.tenant_id != tenant:
        return None
    return row
