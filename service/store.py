"""Store operations shared by the API and the workers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select, delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.config import load_config
from service.ids import new_id
from service.parsing import ParsedTable, sha256
from service.tables import Dataset, DatasetPayload

T = TypeVar("T")


def save_dataset(sessions: sessionmaker[Session], table: ParsedTable, description: dict[str, Any],
                 name: str, source: str) -> Dataset:
    """Store a parsed table once (by sha256 of its .npz bytes) and a dataset row pointing at it."""
    npz = table.to_npz()
    digest = sha256(npz)
    for _attempt in range(2):
        # The payload goes in its own transaction: a concurrent upload of the same
        # table may insert it first, which is fine.
        with sessions() as session:
            if session.get(DatasetPayload, digest) is None:
                session.add(DatasetPayload(sha256=digest, npz=npz, size_bytes=len(npz)))
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
        with sessions() as session:
            dataset = Dataset(id=new_id("ds"), name=name, payload_sha256=digest, n_rows=table.n_rows,
                              columns=table.columns, features=description["features"],
                              targets=description["targets"], task=description["task"],
                              classes=description["classes"], source=source)
            session.add(dataset)
            try:
                session.commit()
                return dataset
            except IntegrityError:
                # The payload was deleted with another dataset in between: store it again.
                session.rollback()
    raise RuntimeError("could not store the dataset payload")


def dataset_cache_dir() -> Path:
    """Return this host's dataset cache, DATA_DIR/dataset-cache."""
    return Path(load_config()["DATA_DIR"]) / "dataset-cache"


def load_table(session: Session, dataset: Dataset, cache_dir: Path | None = None) -> ParsedTable:
    """Read a dataset's table, from this host's cache when it has it, else from the database.

    Payloads are immutable and named by their sha256, so a cached file never goes
    stale: a second job on the same dataset reads `<sha256>.npz` from local disk.
    A file whose bytes do not hash to its name (a crash mid-copy, a bad disk) is
    fetched again. Nothing is unpickled either way.
    """
    digest = dataset.payload_sha256
    path = (dataset_cache_dir() if cache_dir is None else cache_dir) / f"{digest}.npz"
    try:
        cached = path.read_bytes()
    except OSError:
        cached = None
    if cached is not None and sha256(cached) == digest:
        return ParsedTable.from_npz(cached)
    npz = session.scalar(select(DatasetPayload.npz).where(DatasetPayload.sha256 == digest))
    if npz is None:
        raise LookupError(f"the payload of dataset {dataset.id} is missing")
    _write_atomically(path, npz)
    return ParsedTable.from_npz(npz)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a cache file under a temporary name and rename it, so readers never see half of it."""
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=".tmp-", delete=False) as handle:
            temporary = handle.name
            handle.write(data)
        os.replace(temporary, path)
    except OSError:
        # A full or read-only disk only costs the next job a fetch from the database.
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete a dataset and its payload when no other dataset shares it (caller commits)."""
    digest = dataset.payload_sha256
    session.delete(dataset)
    session.flush()
    shared = session.scalar(select(exists().where(Dataset.payload_sha256 == digest)))
    if not shared:
        session.execute(delete(DatasetPayload).where(DatasetPayload.sha256 == digest))


def paginate(session: Session, statement: Select[tuple[T]], id_column: Any, limit: int,
             cursor: str | None) -> tuple[list[T], str | None]:
    """Return one page, newest first, and the cursor of the next page (None at the end)."""
    if cursor:
        statement = statement.where(id_column < cursor)
    rows = list(session.scalars(statement.order_by(id_column.desc()).limit(limit + 1)))
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, getattr(rows[-1], "id")
    return rows, None


def dataset_input_width(dataset: Dataset) -> int:
    """Return the encoded input width: one per numeric feature, one per category of a string one."""
    kinds = {c["name"]: c for c in dataset.columns}
    return sum(1 if kinds[f]["kind"] == "numeric" else len(kinds[f]["categories"])
               for f in dataset.features)
