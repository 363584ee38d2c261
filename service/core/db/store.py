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
from service.core.data.preprocessing import encoded_width
from service.core.db.tables import DEFAULT_TENANT, Dataset, DatasetPayload, DatasetPayloadChunk
from service.core.ids import new_id
from service.core.settings import load_config

T = TypeVar("T")

# A payload is stored (and fetched) in pieces of this size, one statement each, so neither
# the API nor the database driver ever holds a whole .npz (docs/performance.md, "Uploads").
PAYLOAD_CHUNK_BYTES = 4 << 20
# The chunks' table itself: Core inserts, no ORM objects (see store_payload).
CHUNKS = cast(Table, DatasetPayloadChunk.__table__)


def payload_key(tenant_id: str, content_sha256: str) -> str:
    """Return the key a tenant's payload is stored under: the sha256 of the tenant and of the .npz's sha256.

    Payloads are addressed per tenant, so an upload only ever finds a payload of its
    own tenant: whether another tenant stored the same file shows neither in the
    answer nor in how long the upload takes. Payloads stored before keep their key
    (the .npz's sha256 alone) and stay readable (`payload_matches`).
    """
    return hashlib.sha256(f"{tenant_id}\0{content_sha256}".encode()).hexdigest()


def payload_matches(key: str, tenant_id: str | None, content_sha256: str) -> bool:
    """Say whether bytes hashing to `content_sha256` are what `key` names (per tenant, or by content)."""
    return key == content_sha256 or (tenant_id is not None and key == payload_key(tenant_id, content_sha256))


# check_room(session, key, size) may refuse an upload by raising (a tenant's storage limit).
RoomCheck = Callable[[Session, str, int], None]


def store_payload(sessions: sessionmaker[Session], table: ParsedTable,
                  before_store: Callable[[str, int], None] | None = None,
                  tenant_id: str | None = None) -> str:
    """Store a table's .npz bytes once, in chunks, unless they are stored already; return their key.

    The key is `payload_key(tenant_id, sha256)`, or the sha256 itself without a tenant.
    `before_store(key, size)` runs before anything is written and may refuse by raising.

    The .npz goes to an unnamed temporary file, is hashed from there and inserted
    one chunk per statement, all in one transaction: readers see all of it or none.
    """
    return _store_payload(sessions, table, before_store, tenant_id)[0]


def _store_payload(sessions: sessionmaker[Session], table: ParsedTable,
                   before_store: Callable[[str, int], None] | None,
                   tenant_id: str | None) -> tuple[str, int, bool]:
    """Do store_payload; return (key, size, whether this call wrote the payload)."""
    with tempfile.TemporaryFile(prefix="payload-") as spool:
        table.write_npz(spool)
        size = spool.tell()
        spool.seek(0)
        digest = _file_sha256(spool)
        key = digest if tenant_id is None else payload_key(tenant_id, digest)
        if before_store is not None:
            before_store(key, size)
        # The payload goes in its own transaction: a concurrent upload of the same
        # table may insert it first, which is fine.
        with sessions() as session:
            if session.get(DatasetPayload, key) is not None:
                return key, size, False
            session.add(DatasetPayload(sha256=key, npz=b"", size_bytes=size))  # b"": in chunks
            try:
                session.flush()
                spool.seek(0)
                seq = 0
                while chunk := spool.read(PAYLOAD_CHUNK_BYTES):
                    # Core inserts: ORM objects would keep every chunk alive until the commit.
                    session.execute(insert(CHUNKS).values(sha256=key, seq=seq, data=chunk))
                    seq += 1
                    del chunk
                session.commit()
            except IntegrityError:
                session.rollback()
                return key, size, False
    return key, size, True


def _file_sha256(handle: IO[bytes]) -> str:
    """Return the hex sha256 of the rest of a binary file, read a chunk at a time."""
    digest = hashlib.sha256()
    while chunk := handle.read(PAYLOAD_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def save_dataset(sessions: sessionmaker[Session], table: ParsedTable, description: dict[str, Any],
                 name: str, source: str, tenant_id: str = DEFAULT_TENANT,
                 check_room: RoomCheck | None = None) -> Dataset:
    """Store a parsed table once per tenant (`payload_key`) and a tenant's dataset row pointing at it.

    `check_room(session, key, size)` runs twice: before the payload is written (a
    refusal then writes nothing), and in the dataset row's own transaction, right
    before its insert. There it takes the lock it needs (the API's holds the tenant's
    row), so that concurrent uploads are checked and inserted one after the other and
    cannot all fit in the same room. A refusal there deletes, in that transaction, the
    payload this call wrote unless a dataset uses it by then: nothing is left behind.
    """
    def before_store(key: str, size: int) -> None:
        if check_room is not None:
            with sessions() as session:
                check_room(session, key, size)

    for _attempt in range(2):
        key, size, wrote = _store_payload(sessions, table, before_store, tenant_id)
        with sessions() as session:
            if check_room is not None:
                try:
                    check_room(session, key, size)
                except Exception:
                    if wrote:
                        _delete_unused_payload(session, key)
                        session.commit()
                    raise
            dataset = Dataset(id=new_id("ds"), tenant_id=tenant_id, name=name, payload_sha256=key,
                              n_rows=table.n_rows,
                              columns=description.get("columns", table.columns),
                              features=description["features"], targets=description["targets"],
                              task=description["task"], classes=description["classes"], source=source,
                              n_rows_without_target=description.get("n_rows_without_target", 0),
                              warnings=description.get("warnings", []))
            session.add(dataset)
            try:
                session.commit()
                return dataset
            except IntegrityError:
                # The payload was deleted with another dataset in between: store it again.
                session.rollback()
    raise RuntimeError("could not store the dataset payload")


def _delete_unused_payload(session: Session, key: str) -> None:
    """Delete a payload and its chunks unless a dataset uses it (the caller commits)."""
    if not session.scalar(select(exists().where(Dataset.payload_sha256 == key))):
        session.execute(delete(DatasetPayloadChunk).where(DatasetPayloadChunk.sha256 == key))
        session.execute(delete(DatasetPayload).where(DatasetPayload.sha256 == key))


def dataset_cache_dir() -> Path:
    """Return this host's dataset cache, DATA_DIR/dataset-cache."""
    return Path(load_config()["DATA_DIR"]) / "dataset-cache"


def load_table(session: Session, dataset: Dataset, cache_dir: Path | None = None) -> ParsedTable:
    """Read a dataset's table, from this host's cache when it has it, else from the database.

    Payloads are immutable and named by their key, so a cached file never goes
    stale: a second job on the same dataset reads `<key>.npz` from local disk.
    A file whose bytes do not hash to its key (`payload_matches`: a crash mid-copy,
    a bad disk) is fetched again. A fetch streams the payload's chunks into the
    cache, hashing them on the way. Nothing is unpickled either way.
    """
    key = dataset.payload_sha256

    def matches(content_sha256: str) -> bool:
        return payload_matches(key, dataset.tenant_id, content_sha256)

    path = (dataset_cache_dir() if cache_dir is None else cache_dir) / f"{key}.npz"
    try:
        with path.open("rb") as handle:
            cached = matches(_file_sha256(handle))
    except OSError:
        cached = False
    if cached:
        return ParsedTable.from_npz(path)
    row = session.execute(select(DatasetPayload.npz).where(DatasetPayload.sha256 == key)).first()
    if row is None:
        raise LookupError(f"the payload of dataset {dataset.id} is missing")
    if row.npz:  # stored whole, before migration 0005
        parts: Iterator[bytes] = iter([row.npz])
    else:
        parts = _payload_chunks(session, key)
    try:
        _write_atomically(path, parts, matches)
    except OSError:
        # A full or read-only disk only costs the next job a fetch from the database.
        npz = row.npz or b"".join(_payload_chunks(session, key))
        if not matches(sha256(npz)):
            raise LookupError(f"the payload of dataset {dataset.id} does not hash to its key") from None
        return ParsedTable.from_npz(npz)
    return ParsedTable.from_npz(path)


def _payload_chunks(session: Session, digest: str) -> Iterator[bytes]:
    """Yield a chunked payload's bytes, one chunk (one query) at a time."""
    seqs = session.scalars(select(DatasetPayloadChunk.seq).where(DatasetPayloadChunk.sha256 == digest)
                           .order_by(DatasetPayloadChunk.seq)).all()
    for seq in seqs:
        yield session.scalars(select(DatasetPayloadChunk.data).where(
            DatasetPayloadChunk.sha256 == digest, DatasetPayloadChunk.seq == seq)).one()


def _write_atomically(path: Path, parts: Iterator[bytes], matches: Callable[[str], bool]) -> None:
    """Write a cache file under a temporary name and rename it, so readers never see half of it.

    Raises LookupError when `matches` refuses the bytes' sha256 (nothing is left behind),
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
        if not matches(hashed.hexdigest()):
            raise LookupError(f"the stored payload {path.stem} does not hash to its key")
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


def dataset_input_width(dataset: Dataset, features: list[str] | None = None) -> int:
    """Return the encoded input width (preprocessing.encoded_width: what a fit would give at most).

    `features` are a job's columns (default the dataset's features).
    """
    return encoded_width(dataset.columns, dataset.features if features is None else features)
