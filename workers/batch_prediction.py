"""Run a batch prediction: a stored dataset's rows with a model's predictions (docs/service.md, "Batch predictions").

A batch prediction is a job row of kind `batch_predict` (service.core.statuses.JobKind),
run in the frame of workers/scoring.py. The rows go through the model in chunks (the
activation budget, MAX_ACTIVATION_FLOATS, bounds a chunk's rows, as it bounds the
training worker's validation passes), each chunk encoded, predicted, decoded and
appended to a temporary file under DATA_DIR/tmp, so the worker holds the dataset and
one chunk, never the whole output. The file is then stored in `job_output_chunks`
rows of a few MB each, in the transaction that ends the job succeeded while it holds
the lease: a worker killed on the way leaves no chunk, and the next attempt starts over.

The file holds the dataset's columns (every one, in its order, with its values as
stored), then `prediction` (`prediction_<target>` for each target of a regression
with several), then `probability_<class>` per class. CSV numbers are written in the
shortest form that reads back as the same float32 (float64 for a regression's
predictions), by orjson, which writes a 65,536 x 64 block of float32 in about 0.15 s
where pyarrow's CSV writer took half a second and pyarrow's cast to strings 0.4 s
(benchmarks/batch_predict.py).

Which data the CSV fast path covers: a run of adjacent numeric columns whose chunk
holds only whole numbers of at most 2**24 and no missing cell (counts, codes, pixels:
the digits the benchmark scores) is written as integers, about 4x faster than floats.
Any other numeric run (measured values such as 3.0712457, or a missing cell) takes
the float formatting, whose orjson call holds the GIL (a thread pool gains nothing):
the benchmark's float rows, the same digits with noise added, are written at about
half the rate of the whole-number ones (benchmarks/README.md, "Batch predictions").
Parquet writes every column the same way, whatever its values.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session, sessionmaker

from service.core.data.parsing import ParsedTable
from service.core.data.preprocessing import Preprocessor
from service.core.db.tables import JobOutputChunk
from service.core.networks import rows_per_pass
from service.core.schemas import BATCH_PREDICTION_FORMAT_DEFAULT, BATCH_PREDICTION_MEDIA_TYPES
from service.core.settings import load_config
from workers.lease import JobSettings, Publish
from workers.scoring import ScoringJob, run_scoring_job

# Rows per chunk at most: beyond this, larger chunks gain nothing and cost memory.
CHUNK_ROWS = 65_536
# Cells (the dataset's columns and the output's) per chunk at most: a chunk's text, held a
# few times over while it is joined, is ~10 bytes a cell, so a chunk holds a few tens of MB
# however wide the dataset (smaller chunks cost no measurable speed).
CHUNK_CELLS = 1 << 20
# A numeric column of at most this many distinct values is dictionary-encoded in Parquet.
DICTIONARY_MAX_DISTINCT = 1_000
# Bytes per stored piece of the file (a job_output_chunks row).
PIECE_BYTES = 4 << 20
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def output_names(table: ParsedTable, preprocessor: Preprocessor) -> list[str]:
    """Return the file's columns: the dataset's, then the prediction's, then each class's probability.

    An output column named like a column already there gets underscores in front until
    it is not: readers (pyarrow's among them) refuse a file with two columns of one name.
    """
    names = [c["name"] for c in table.columns]
    if preprocessor.task == "classification":
        outputs = ["prediction"] + [f"probability_{c}" for c in preprocessor.classes or []]
    else:
        targets = preprocessor.target["names"]
        outputs = ["prediction"] if len(targets) == 1 else [f"prediction_{t}" for t in targets]
    taken = set(names)
    for name in outputs:
        while name in taken:
            name = f"_{name}"
        names.append(name)
        taken.add(name)
    return names


def _seconds_to_datetime64(seconds: np.ndarray, has_time: bool) -> np.ndarray:
    """Return datetime64 values (NaT for missing): days for a date column, else seconds or microseconds."""
    present = ~np.isnan(seconds)
    filled = np.where(present, seconds, 0.0)
    if not has_time:
        moments = np.floor(filled / 86_400).astype(np.int64).view("datetime64[D]")
    elif np.array_equal(filled, np.floor(filled)):
        moments = filled.astype(np.int64).view("datetime64[s]")
    else:  # fractional seconds, as uploaded
        moments = np.round(filled * 1e6).astype(np.int64).view("datetime64[us]")
    moments[~present] = np.datetime64("NaT")
    return moments


def _quoted(value: Any) -> bytes:
    """Return one CSV cell as the csv module writes it (quoted only when it must be)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue().encode()


def _number_rows(block: np.ndarray) -> list[bytes]:
    """Return each row of a 2-D number block as CSV cells: the shortest float form, empty for NaN.

    A block of whole numbers without a missing cell (counts, codes, pixels) is written as
    integers, 4x faster than floats: `3` for 3.0, as such a column was most likely uploaded.
    """
    if block.size and block.dtype == np.float32 and _whole(block):
        text = orjson.dumps(block.astype(np.int64), option=_NUMPY)
    else:
        text = orjson.dumps(np.ascontiguousarray(block), option=_NUMPY)
        if np.isnan(block).any():  # orjson writes NaN as null: an empty cell (a scan of the text costs more)
            text = text.replace(b"null", b"")
    # "[[a,b],[c,d]]": split, then trim the first and last rows (not a copy of the whole text). Bytes,
    # not memoryviews of the text: those are tracked by the garbage collector, whose collections
    # 65,536 of them a block set off made a chunk 3x slower in a worker's heap.
    rows = text.split(b"],[")
    rows[0] = rows[0][2:]
    rows[-1] = rows[-1][:-2]
    return rows


# float32 holds every integer up to this exactly: a whole float32 beyond it is written as a float.
_EXACT_FLOAT32 = float(2**24)


def _whole(block: np.ndarray) -> bool:
    """Say whether every cell is a whole number float32 holds exactly (NaN is not)."""
    if len(block) > 1 and not _whole(block[:1]):  # measured data says so in its first row, at no cost
        return False
    return bool((np.abs(block) <= _EXACT_FLOAT32).all() and (np.floor(block) == block).all())


class _Writer:
    """Appends chunks of output rows to a file in one format."""

    def __init__(self, handle: IO[bytes], table: ParsedTable, preprocessor: Preprocessor, fmt: str) -> None:
        self.handle = handle
        self.table = table
        self.format = fmt
        self.names = output_names(table, preprocessor)
        self.classes = preprocessor.classes
        columns = table.columns
        # Runs of adjacent numeric columns, written as one block each.
        self.runs: list[tuple[int, int] | int] = []
        for j, column in enumerate(columns):
            last = self.runs[-1] if self.runs else None
            if column["kind"] != "numeric":
                self.runs.append(j)
            elif isinstance(last, tuple) and last[1] == j:
                self.runs[-1] = (last[0], j + 1)
            else:
                self.runs.append((j, j + 1))
        if fmt == "csv":
            # Each string column's cells by code, the last one (index len(categories)) missing.
            self.cells = {j: np.array([_quoted(c) for c in column["categories"]] + [b""], dtype=object)
                          for j, column in enumerate(columns) if column["kind"] == "string"}
            self.labels = None if self.classes is None else np.array(
                [_quoted(c) for c in self.classes], dtype=object)
            handle.write(b",".join(_quoted(name) for name in self.names) + b"\n")
        else:
            self.dictionaries = {j: pa.array(column["categories"], pa.string())
                                 for j, column in enumerate(columns) if column["kind"] == "string"}
            schema = self._schema()
            self.parquet = pq.ParquetWriter(handle, schema, use_dictionary=self._dictionary_columns(schema))

    def _dictionary_columns(self, schema: pa.Schema) -> list[str]:
        """Return the columns Parquet dictionary-encodes: strings, labels, numbers of few distinct values.

        Trying a dictionary on a column of a million distinct floats (measured values, the
        probabilities) made pyarrow's writer 7x slower and the file larger; on a column of
        few values (counts, codes) it makes the file 3x smaller at the same speed.
        """
        few = {c["name"] for c in self.table.columns
               if c["kind"] == "numeric" and c.get("distinct", DICTIONARY_MAX_DISTINCT + 1) <= DICTIONARY_MAX_DISTINCT}
        return [field.name for field in schema
                if field.name in few or pa.types.is_string(field.type) or pa.types.is_integer(field.type)]

    def _schema(self) -> pa.Schema:
        fields = []
        for column in self.table.columns:
            kind = column["kind"]
            if kind == "numeric":
                fields.append(pa.field(column["name"], pa.float32()))
            elif kind == "string":
                fields.append(pa.field(column["name"], pa.string()))
            else:
                fields.append(pa.field(column["name"], pa.timestamp("us") if column.get("has_time")
                                       else pa.date32()))
        extra = self.names[len(self.table.columns):]
        if self.classes is not None:
            label = pa.string() if any(isinstance(c, str) for c in self.classes) else pa.int64()
            fields.append(pa.field(extra[0], label))
            fields += [pa.field(name, pa.float32()) for name in extra[1:]]
        else:
            fields += [pa.field(name, pa.float64()) for name in extra]
        return pa.schema(fields)

    def write(self, start: int, stop: int, chosen: np.ndarray | None, outputs: np.ndarray) -> None:
        """Append rows start:stop of the table with their decoded outputs (Preprocessor.decode_arrays)."""
        if self.format == "csv":
            self._write_csv(start, stop, chosen, outputs)
        else:
            self._write_parquet(start, stop, chosen, outputs)

    def _datetimes(self, column: dict[str, Any], start: int, stop: int) -> np.ndarray:
        datetimes = self.table.datetimes
        assert datetimes is not None, "a datetime column without the table's datetimes"
        return _seconds_to_datetime64(datetimes[start:stop, column["slot"]], bool(column.get("has_time")))

    def _write_csv(self, start: int, stop: int, chosen: np.ndarray | None, outputs: np.ndarray) -> None:
        values = self.table.values[start:stop]
        segments: list[list[bytes]] = []
        for run in self.runs:
            if isinstance(run, tuple):
                segments.append(_number_rows(values[:, run[0]:run[1]]))
                continue
            column = self.table.columns[run]
            if column["kind"] == "string":
                cells = self.cells[run]
                codes = values[:, run]
                index = np.where(np.isnan(codes), len(cells) - 1, codes).astype(np.int64)
                segments.append(cells[index].tolist())
            else:
                text = np.datetime_as_string(self._datetimes(column, start, stop)).astype("S")
                segments.append([b"" if cell == b"NaT" else cell for cell in text.tolist()])
        if chosen is not None:
            assert self.labels is not None
            segments.append(self.labels[chosen].tolist())
        segments.append(_number_rows(outputs))
        self.handle.write(b"\n".join(map(b",".join, zip(*segments))) + b"\n")

    def _write_parquet(self, start: int, stop: int, chosen: np.ndarray | None, outputs: np.ndarray) -> None:
        values = self.table.values[start:stop]
        arrays: list[pa.Array] = []
        for j, column in enumerate(self.table.columns):
            kind = column["kind"]
            if kind == "numeric":
                column_values = values[:, j]
                arrays.append(pa.array(column_values, pa.float32(), mask=np.isnan(column_values)))
            elif kind == "string":
                codes = values[:, j]
                missing = np.isnan(codes)
                index = pa.array(np.where(missing, 0, codes).astype(np.int32), mask=missing)
                arrays.append(pa.DictionaryArray.from_arrays(index, self.dictionaries[j]).dictionary_decode())
            else:
                moments = self._datetimes(column, start, stop)
                # A mask, not from_pandas (which would import pandas, 40 MiB, for NaT).
                arrays.append(pa.array(moments, self.parquet.schema.field(j).type, mask=np.isnat(moments)))
        if chosen is not None:
            assert self.classes is not None
            arrays.append(pa.array(self.classes, self.parquet.schema.field(len(arrays)).type).take(chosen))
        arrays += [pa.array(outputs[:, k]) for k in range(outputs.shape[1])]
        self.parquet.write_table(pa.Table.from_arrays(arrays, schema=self.parquet.schema))

    def close(self) -> None:
        """Finish the file (Parquet's footer)."""
        if self.format == "parquet":
            self.parquet.close()


def chunk_rows(scoring: ScoringJob) -> int:
    """Return the rows of one chunk: within the activation budget, CHUNK_ROWS and CHUNK_CELLS."""
    per_pass = rows_per_pass(scoring.network.activation_width, scoring.recorder.settings.max_activation_floats)
    cells = len(output_names(scoring.table, scoring.preprocessor))
    return max(1, min(CHUNK_ROWS, per_pass, CHUNK_CELLS // cells))


def write_predictions(scoring: ScoringJob, handle: IO[bytes], fmt: str,
                      check: Callable[[], None] | None = None) -> int:
    """Write the dataset's rows with their predictions to `handle` in `fmt`, a chunk at a time; return the rows.

    `check` runs between chunks (the job's heartbeat; it raises to stop).
    """
    table, preprocessor, loss = scoring.table, scoring.preprocessor, scoring.model.loss
    writer = _Writer(handle, table, preprocessor, fmt)
    per_chunk = chunk_rows(scoring)
    per_pass = rows_per_pass(scoring.network.activation_width, scoring.recorder.settings.max_activation_floats)
    for start in range(0, table.n_rows, per_chunk):
        stop = min(start + per_chunk, table.n_rows)
        encoded = preprocessor.encode_table(table, np.arange(start, stop))
        outputs = scoring.network.predict(encoded, loss=loss, max_rows=per_pass)
        chosen, decoded = preprocessor.decode_arrays(outputs, loss)
        # The float64 probabilities chose the class, as /predict's do; they are written at the
        # network's own precision, float32 (a regression's predictions stay float64).
        writer.write(start, stop, chosen, decoded if chosen is None else decoded.astype(np.float32))
        if check is not None:
            check()
    writer.close()
    return table.n_rows


def _pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(PIECE_BYTES):
            yield piece


def _predict(scoring: ScoringJob) -> None:
    """Write the file under DATA_DIR/tmp, then store it in pieces as the job succeeds (one transaction).

    Files of the job's earlier attempts there (DATA_DIR/tmp/{job_id}-*) are deleted first.
    """
    fmt = str(scoring.options.get("format", BATCH_PREDICTION_FORMAT_DEFAULT))
    folder = Path(load_config()["DATA_DIR"]) / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    # An earlier attempt killed mid-way (out of memory, SIGKILL) never reached its `finally`:
    # its file is removed here, so that a job retried after a crash leaves no file behind. A
    # stale duplicate still writing one (its lease taken by this attempt) then fails to read
    # it back, which changes nothing: its success would be refused all the same.
    for stale in folder.glob(f"{glob.escape(scoring.job_id)}-*"):
        stale.unlink(missing_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f"{scoring.job_id}-", suffix=f".{fmt}", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            n_rows = write_predictions(scoring, handle, fmt, check=scoring.check)
        digest = hashlib.sha256()
        for piece in _pieces(path):
            digest.update(piece)
        result = {"n_rows": n_rows, "size_bytes": path.stat().st_size, "format": fmt,
                  "media_type": BATCH_PREDICTION_MEDIA_TYPES[fmt], "sha256": digest.hexdigest()}

        def store(session: Session) -> None:
            # An earlier attempt's pieces cannot be committed (they go with its success), but
            # the file is this attempt's alone: start from none all the same.
            session.execute(delete(JobOutputChunk).where(JobOutputChunk.job_id == scoring.job_id))
            for seq, piece in enumerate(_pieces(path)):
                session.execute(insert(JobOutputChunk).values(job_id=scoring.job_id, seq=seq, data=piece))

        scoring.succeed(result, write=store)
    finally:
        path.unlink(missing_ok=True)


def run_batch_prediction(job_id: str, sessions: sessionmaker[Session] | None = None, owner: str | None = None,
                         settings: JobSettings | None = None, shutdown: Callable[[], bool] | None = None,
                         publish: Publish | None = None) -> str:
    """Run the batch prediction job with this id; return its status as this worker left it.

    Parameters
    ----------
    job_id
        A `bp_…` job (kind `batch_predict`).
    sessions, owner, settings, shutdown, publish
        As workers.training.run_job: the database, this worker's lease name, the recovery
        settings, whether the worker is stopping (the job is then handed back), and how a
        handed-back job is published again.
    """
    return run_scoring_job(job_id, _predict, sessions=sessions, owner=owner, settings=settings,
                           shutdown=shutdown, publish=publish)
