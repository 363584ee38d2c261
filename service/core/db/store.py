"""Store operations shared by the API and the workers."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from sqlalchemy import Select, Table, delete, exists, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.core.data.parsing import ParsedTable, sha256
from service.core.db.tables import DEFAULT_TENANT, Dataset, DatasetPayload, DatasetPayloadChunk
from service.core.ids import new_id
from service.core.settings import load_config

T = TypeVar("T")

# A payload is stored (and fetched) in pieces of this size, one statement each, so neither
# the API nor the database driver ever holds a whole .npz (docs/performance.md, "Uploads").
PAYLOAD_CHUNK_BYTES = 4 << 20
# The chunks' table itself: Core inserts, no ORM objects (see store_payload).
CHUNKS = cast(Table, DatasetPayloadChunk.__table__)


def store_payload(sessions: sessionmaker[Session], table: ParsedTable,
                  before_store: Callable[[str, int], None] | None = None) -> str:
    """Store a table's .npz bytes once, in chunks, unless they are stored already; return their sha256.

    `before_store(sha256, size)` runs before anything is written and may refuse by
    raising (a tenant's storage limit, service/core/tenancy/limits.py).

    The .npz goes to an unnamed temporary file, is hashed from there and inserted
    one chunk per statement, all in one transaction: readers see all of it or none.
    """
    with tempfile.TemporaryFile(prefix="payload-") as spool:
        table.write_npz(spool)
        size = spool.tell()
        spool.seek(0)
        digest = _file_sha256(spool)
        if before_store is not None:
            before_store(digest, size)
        # The payload goes in its own transaction: a concurrent upload of the same
        # table may insert it first, which is fine.
        with sessions() as session:
            if session.get(DatasetPayload, digest) is not None:
                return digest
            session.add(DatasetPayload(sha256=digest, npz=b"", size_bytes=size))  # b"": in chunks
            try:
                session.flush()
                spool.seek(0)
                seq = 0
                while chunk := spool.read(PAYLOAD_CHUNK_BYTES):
                    # Core inserts: ORM objects would keep every chunk alive until the commit.
                    session.execute(insert(CHUNKS).values(sha256=digest, seq=seq, data=chunk))
                    seq += 1
                    del chunk
                session.commit()
            except IntegrityError:
                session.rollback()
    return digest


def _file_sha256(handle: IO[bytes]) -> str:
    """Return the hex sha256 of the rest of a binary file, read a chunk at a time."""
    digest = hashlib.sha256()
    while chunk := handle.read(PAYLOAD_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def save_dataset(sessions: sessionmaker[Session], table: ParsedTable, description: dict[str, Any],
                 name: str, source: str, tenant_id: str = DEFAULT_TENANT,
                 before_store: Callable[[str, int], None] | None = None) -> Dataset:
    """Store a parsed table once (by sha256 of its .npz bytes) and a tenant's dataset row pointing at it.

    `before_store` is store_payload's: it may refuse the upload before anything is written.
    """
    for _attempt in range(2):
        digest = store_payload(sessions, table, before_store)
        with sessions() as session:
            dataset = Dataset(id=new_id("ds"), tenant_id=tenant_id, name=name, payload_sha256=digest,
                              n_rows=table.n_rows,
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
    fetched again. A fetch streams the payload's chunks into the cache, hashing
    them on the way. Nothing is unpickled either way.
    """
    digest = dataset.payload_sha256
    path = (dataset_cache_dir() if cache_dir is None else cache_dir) / f"{digest}.npz"
    try:
        with path.open("rb") as handle:
            cached = _file_sha256(handle) == digest
    except OSError:
        cached = False
    if cached:
        return ParsedTable.from_npz(path)
    row = session.execute(select(DatasetPayload.npz).where(DatasetPayload.sha256 == digest)).first()
    if row is None:
        raise LookupError(f"the payload of dataset {dataset.id} is missing")
    if row.npz:  # stored whole, before migration 0005
        parts: Iterator[bytes] = iter([row.npz])
    else:
        parts = _payload_chunks(session, digest)
    try:
        _write_atomically(path, parts, digest)
    except OSError:
        # A full or read-only disk only costs the next job a fetch from the database.
        npz = row.npz or b"".join(_payload_chunks(session, digest))
        if sha256(npz) != digest:
            raise LookupError(f"the payload of dataset {dataset.id} does not hash to its sha256") from None
        return ParsedTable.from_npz(npz)
    return ParsedTable.from_npz(path)


def _payload_chunks(session: Session, digest: str) -> Iterator[bytes]:
    """Yield a chunked payload's bytes, one chunk (one query) at a time."""
    seqs = session.scalars(select(DatasetPayloadChunk.seq).where(DatasetPayloadChunk.sha256 == digest)
                           .order_by(DatasetPayloadChunk.seq)).all()
    for seq in seqs:
        yield session.scalars(select(DatasetPayloadChunk.data).where(
            DatasetPayloadChunk.sha256 == digest, DatasetPayloadChunk.seq == seq)).one()


def _write_atomically(path: Path, parts: Iterator[bytes], digest: str) -> None:
    """Write a cache file under a temporary name and rename it, so readers never see half of it.

    Raises LookupError when the bytes do not hash to `digest` (nothing is left behind),
    OSError when the disk refuses them.
    """
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        hashed = hashlib.sha256()
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=".tmp-", delete=False) as handle:
            temporary = handle.name
            for part in parts:
                hashed.update(part)
                handle.write(part)
        if hashed.hexdigest() != digest:
            raise LookupError(f"the stored payload {digest} does not hash to its name")
        os.replace(temporary, path)
        temporary = None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete a dataset and its payload when no other dataset, of any tenant, shares it (caller commits)."""
    digest = dataset.payload_sha256
    session.delete(dataset)
    session.flush()
    shared = session.scalar(select(exists().where(Dataset.payload_sha256 == digest)))
    if not shared:
        session.execute(delete(DatasetPayloadChunk).where(DatasetPayloadChunk.sha256 == digest))
        session.execute(delete(DatasetPayload).where(DatasetPayload.sha256 == digest))


def paginate(session: Session, statement: Select[Any], id_column: Any, limit: int,
             cursor: str | None) -> tuple[list[T], str | None]:
    """Return one page, newest first, and the cursor of the next page (None at the end)."""
    if cursor:
        statement = statement.where(id_column < cursor)
    rows = list(session.scalars(statement.order_by(id_column.desc()).limit(limit + 1)))
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, rows[-1].id
    return rows, None


def dataset_input_width(dataset: Dataset) -> int:
    """Return the encoded input width: one per numeric feature, one per category of a string one."""
    kinds = {c["name"]: c for c in dataset.columns}
    return sum(1 if kinds[f]["kind"] == "numeric" else len(kinds[f]["categories"])
               for f in dataset.features)
