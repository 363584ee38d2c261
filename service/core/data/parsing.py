"""Parse uploaded tables (CSV, JSON rows; formats.py reads the others) into a float32 matrix plus a column schema.

Every kind of column keeps a missing cell as NaN. Numeric columns hold their
values; string columns hold the index of the cell's value in the column's sorted
`categories`; datetime columns hold days since 1970 (approximate) while the exact
seconds live in `ParsedTable.datetimes`. Two passes over the rows keep memory at
the size of the final matrix: the first decides each column's kind on its
non-missing cells and finds every bad cell, the second fills the matrix.

A table whose every column is numeric (the common large upload) is read by
pyarrow instead (`table_from_arrow`: CSV blocks, JSON Lines batches, Parquet row
groups), about 10x faster; anything that reader does not take cleanly (strings,
ragged rows, non-finite numbers, numbers beyond float32) goes through the
row path above, which reports the errors.

A table has at most MAX_COLUMNS columns, counted before anything else is read: a
CSV header's fields are counted in the file itself, so that a header of millions
of names is refused without the csv module building their list. The first pass
keeps each column's distinct strings and at most MAX_DISTINCT_STRINGS of them
across all columns: past that, the column holding the most stops being counted
(it is an identifier, too varied to encode), so that 10,000 columns of 10,000
strings never fill memory.

After both passes each column is described (`missing`, `distinct`) and given a
role: `identifier` (a string column with more than max(50, half the rows)
distinct values), `constant` (at most one distinct value) or `feature`;
describe_target makes the targets `target`. A string column's categories beyond
MAX_CATEGORIES keep the most frequent; the rest fold into one `other`.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import mmap
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.core.problems import FieldError, FieldErrors
from service.core.settings import setting_default

MAX_CLASSIFICATION_INTEGER_LABELS = 20
MAX_ERRORS = 20
CHUNK_ROWS = 8192
# The fast CSV path parses this much text at a time.
CSV_BLOCK_BYTES = 4 << 20
# The store holds float32: a number beyond it would be stored as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_RANGE = "\u00b1" + f"{FLOAT32_MAX:.1e}".replace("e+", "e")  # as messages say it: ±3.4e38
DEFAULT_MAX_COLUMNS: int = setting_default("MAX_COLUMNS")
DEFAULT_MAX_DISTINCT_STRINGS: int = setting_default("MAX_DISTINCT_STRINGS")
DEFAULT_MAX_CATEGORIES: int = setting_default("MAX_CATEGORIES")
# pandas' default NA tokens (pandas._libs.parsers.STR_NA_VALUES), matched against a stripped
# CSV cell; the empty cell is always missing, whatever `na_values` says.
NA_VALUES = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
# The category that folded values (beyond MAX_CATEGORIES) join.
OTHER_CATEGORY = "other"
# A string column is an identifier past this many distinct values, or half its rows if more.
IDENTIFIER_MIN_DISTINCT = 50
ROLES = ("feature", "target", "identifier", "constant")
# ISO 8601 dates and date-times as datetime.fromisoformat reads them; the pattern first, so that
# the basic forms it also takes ("20200102", a number) stay numbers.
ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?"
                          r"(?:Z|[+-]\d{2}(?::?\d{2})?)?)?")
EPOCH = dt.datetime(1970, 1, 1)
SECONDS_PER_DAY = 86_400.0
# One field of a CSV record as the csv module reads it (excel dialect): a quoted part
# ("" is a quote within it) and what follows up to the separator, or an unquoted run
# (where a quote is a character). Unrolled, so that an unclosed quote cannot backtrack.
CSV_FIELD = re.compile(rb'"[^"]*(?:""[^"]*)*"[^,\r\n]*|[^,\r\n]*')
CSV_BLANK_LINES = re.compile(rb"[\r\n]*")

# A row as the parser sees it: (1-based data row, where it is for humans, cells; None = missing).
Row = tuple[int, str, list[str | None]]


class TableError(FieldErrors):
    """The table cannot be used; `errors` names every row and column at fault."""


@dataclass
class ParsedTable:
    """A parsed table: one float32 matrix (NaN = missing), a schema per column, exact datetimes.

    `datetimes` is float64 (n_rows, datetime columns): seconds since 1970-01-01T00:00, in
    UTC for values that carried an offset and as written otherwise; a datetime column's
    schema names its column there (`slot`). `na_values` are the CSV tokens the upload gave
    in place of NA_VALUES (sorted; None: the defaults, or not a CSV), kept so that a model
    fitted on the table reads /predict's CSV bodies as the upload was read.
    """

    columns: list[dict[str, Any]]
    values: np.ndarray
    datetimes: np.ndarray | None = None
    na_values: list[str] | None = None

    @property
    def n_rows(self) -> int:
        """Return the number of data rows."""
        return int(self.values.shape[0])

    def write_npz(self, handle: IO[bytes]) -> None:
        """Write the table as .npz to a seekable binary file (deterministic bytes, so they can be hashed).

        Uncompressed (np.savez): deflate gains little on float32 data and costs more
        than the whole parse (docs/performance.md, "Uploads").
        """
        arrays: dict[str, Any] = {"values": self.values, "columns": np.array(json.dumps(self.columns))}
        if self.datetimes is not None:
            arrays["datetimes"] = self.datetimes
        if self.na_values is not None:  # (absent otherwise: a table read with the defaults keeps its bytes)
            arrays["na_values"] = np.array(json.dumps(self.na_values))
        np.savez(handle, **arrays)

    def to_npz(self) -> bytes:
        """Serialize the table as .npz bytes."""
        # Through a temporary file: a growing BytesIO would hold up to twice the bytes at its peak.
        with tempfile.TemporaryFile() as handle:
            self.write_npz(handle)
            handle.seek(0)
            return handle.read()

    @classmethod
    def from_npz(cls, data: bytes | str | Path) -> ParsedTable:
        """Load a table saved by to_npz, from its bytes or a file's path, never unpickling anything."""
        with np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False) as npz:
            datetimes = npz["datetimes"] if "datetimes" in npz.files else None
            na_values = json.loads(str(npz["na_values"])) if "na_values" in npz.files else None
            return cls(columns=json.loads(str(npz["columns"])), values=npz["values"], datetimes=datetimes,
                       na_values=na_values)


def sha256(data: bytes) -> str:
    """Return the hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def parse_number(cell: str) -> float | None:
    """Return the cell's finite float value, or None when it is not one."""
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _float_or_none(cell: str) -> float | None:
    """Return the cell's float value, finite or not (nan, inf), or None when it is not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def parse_datetime(text: str) -> tuple[float, bool] | None:
    """Return (seconds since 1970-01-01T00:00, whether a time of day was given) for an ISO 8601 text.

    A value with an offset (``Z``, ``+02:00``) is converted to UTC; one without is taken as
    written. None when the text is not an ISO date or date-time (``2020-01-31``,
    ``2020-01-31T08:30``, ``2020-01-31 08:30:00.5+01:00``).
    """
    text = text.strip()
    if not ISO_DATETIME.fullmatch(text):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace(",", "."))
    except ValueError:  # a month 13, a day 32
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return (moment - EPOCH).total_seconds(), len(text) > 10


def na_tokens(na_values: Collection[str] | None) -> frozenset[str]:
    """Return the stripped tokens that mean missing: NA_VALUES, or those given (the empty cell always)."""
    if na_values is None:
        return NA_VALUES
    return frozenset({""} | {token.strip() for token in na_values})


def _csv_rows(path: Path, field: str) -> tuple[list[str], Callable[[], Iterator[Row]]]:
    """Read the header of a CSV file and return it with a factory of its data rows."""

    def open_reader() -> tuple[IO[str], Any]:  # Any: csv.reader's type is private (_csv.Reader)
        # utf-8-sig drops a BOM; newline="" lets the csv module handle CRLF and quoted newlines.
        handle = open(path, encoding="utf-8-sig", newline="")
        return handle, csv.reader(handle)

    def error(message: str) -> TableError:
        return TableError([{"field": field, "message": message}])

    handle, reader = open_reader()
    try:
        header = None
        for cells in reader:
            if cells:
                header = [c.strip() for c in cells]
                break
    except UnicodeDecodeError as exc:
        raise error(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise error(f"line {reader.line_num}: {exc}") from None
    finally:
        handle.close()
    if header is None:
        raise error("the file is empty; expected a header row and data rows")

    def rows() -> Iterator[Row]:
        handle, reader = open_reader()
        with handle:
            number = 0
            seen_header = False
            try:
                for cells in reader:
                    if not cells:  # blank line (trailing or not)
                        continue
                    if not seen_header:
                        seen_header = True
                        continue
                    number += 1
                    yield number, f"row {number} (line {reader.line_num})", cells
            except UnicodeDecodeError as exc:
                raise error(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            except csv.Error as exc:
                raise error(f"line {reader.line_num}: {exc}") from None

    return header, rows


# Separators a file of one column may really use: refused with a hint, since one column
# cannot hold both a feature and a target.
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def parse_csv(path: str | Path, field: str = "file", max_columns: int = DEFAULT_MAX_COLUMNS,
              max_distinct_strings: int = DEFAULT_MAX_DISTINCT_STRINGS, na_values: Collection[str] | None = None,
              max_categories: int = DEFAULT_MAX_CATEGORIES) -> ParsedTable:
    """Parse a CSV file with a header row of at most `max_columns` names (see parse_rows for the rest).

    A cell that is empty or, stripped, one of `na_values` (NA_VALUES by default) is missing;
    given `na_values` are kept in the table's `na_values`.
    """
    too_wide = TableError([{"field": field, "message": f"the file has more than {max_columns:,} columns; "
                                                       f"MAX_COLUMNS is {max_columns:,}"}])
    if _header_wider_than(Path(path), max_columns):
        raise too_wide
    header, rows = _csv_rows(Path(path), field)
    if len(header) > max_columns:  # (the count above is the csv module's; this says so if ever not)
        raise too_wide
    if len(header) == 1:
        for separator, word in OTHER_SEPARATORS.items():
            if separator in header[0]:
                raise TableError([{"field": field, "message": f"the file has one column, whose name "
                                                              f"holds {word}; send comma-separated values"}])
    tokens = na_tokens(na_values)
    table = _parse_numeric_csv(Path(path), header, tokens)
    if table is None:
        table = parse_rows(header, rows, field=field, row_field=None, max_distinct_strings=max_distinct_strings,
                           na_values=tokens, max_categories=max_categories)
    if na_values is not None:
        table.na_values = sorted(tokens - {""})  # (the empty cell is missing whatever they say)
    return table


def _header_wider_than(path: Path, limit: int) -> bool:
    """Say whether the file's header record has more than `limit` fields, reading no more than those.

    The fields are matched in the file mapped into memory, one at a time, as the csv
    module would split them (a BOM and blank lines first skipped), and counting stops
    past `limit`: memory stays flat however long the header is.
    """
    with path.open("rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file, which _csv_rows words
            return False
    with view:
        return header_wider_than(view, limit)


def header_wider_than(text: bytes | mmap.mmap, limit: int) -> bool:
    """Say whether the header record of CSV `text` has more than `limit` fields, matching no more than those.

    The fields are matched one at a time, as the csv module would split them (a BOM and
    blank lines first skipped), and counting stops past `limit`: no list of names is built.
    """
    start = len(b"\xef\xbb\xbf") if text[:3] == b"\xef\xbb\xbf" else 0
    position = CSV_BLANK_LINES.match(text, start).end()  # type: ignore[union-attr]  # * always matches
    fields = 0
    while True:
        fields += 1
        if fields > limit:
            return True
        position = CSV_FIELD.match(text, position).end()  # type: ignore[union-attr]
        if text[position:position + 1] != b",":
            return False
        position += 1


def _parse_numeric_csv(path: Path, header: list[str], na_values: frozenset[str]) -> ParsedTable | None:
    """Read an all-numeric CSV with pyarrow; None when the table needs the csv-module path.

    That path defines the rules; this one only takes files on which both agree:
    the same stripped header, no quotes, every column int64, double or all missing,
    every value finite and within float32, at least one data row. Only cells that are
    exactly a NA token are missing here (pyarrow does not strip them); a padded one
    makes a string column, hence the csv-module path. The file is read in blocks of
    whole lines into a matrix sized by its line count, so memory stays near the matrix.
    """
    # Names the csv-module path refuses (empty, repeated, holding a NUL) are refused there.
    if not header or any(not name or "\x00" in name for name in header) or len(set(header)) != len(header):
        return None
    import pyarrow as pa  # noqa: PLC0415 - only uploads need it; workers never load it
    import pyarrow.csv as pa_csv  # noqa: PLC0415

    convert = pa_csv.ConvertOptions(null_values=sorted(na_values), strings_can_be_null=True,
                                    quoted_strings_can_be_null=True)
    read = pa_csv.ReadOptions(column_names=header)  # the header row is skipped below
    pool = pa.system_memory_pool()

    def blocks(handle: IO[bytes]) -> Iterator[Any]:
        for text in whole_line_blocks(handle, CSV_BLOCK_BYTES):
            if text is None or text.obj.find(b'"', 0, len(text)) != -1:  # type: ignore[attr-defined]
                yield None  # a quoted field may hold a newline: leave it to the csv module
                return
            try:
                table = pa_csv.read_csv(pa.BufferReader(text), read_options=read, convert_options=convert,
                                        memory_pool=pool)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if not bytes(text).strip():
                    continue  # only blank lines
                yield None
                return
            yield table
            del table
            pool.release_unused()  # hand the block's memory back to the OS, not to the next peak

    with path.open("rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(CSV_BLOCK_BYTES), b"")) + 1
        handle.seek(0)
        while (line := handle.readline()) and not line.strip():  # blank lines, then the header row
            pass
        # (more rows than newlines: lines end in a lone CR, which the csv module reads otherwise)
        return table_from_arrow(header, blocks(handle), capacity=lines)


def whole_line_blocks(handle: IO[bytes], size: int) -> Iterator[memoryview | None]:
    """Yield a file's bytes in blocks of at most `size` that end on a line end (the last as it ends).

    A line longer than `size` yields None, and nothing after it: the caller's careful
    path reads such a file.
    """
    while block := handle.read(size):
        cut = len(block)
        if cut == size:  # end on a whole line; the rest is read again next time
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                yield None
                return
            handle.seek(cut - len(block), os.SEEK_CUR)
        yield memoryview(block)[:cut]


# numpy's name for each pyarrow numeric type the fast path reads from its data buffer.
_ARROW_NUMPY_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
                      "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
                      "halffloat": np.float16, "float": np.float32, "double": np.float64}


def table_from_arrow(header: list[str], batches: Iterable[Any], capacity: int | None = None,
                     nan_is_missing: bool = False) -> ParsedTable | None:
    """Build an all-numeric table from pyarrow Tables or RecordBatches; None when it needs the row path.

    Each batch must have the `header`'s columns (by name, any order) and each column an
    integer, floating or null type; a null is a missing cell (NaN). A batch given as None
    means the reader met something only the row path reads. Non-finite values and numbers
    beyond float32 also send the table to the row path, which names them; with
    `nan_is_missing` (typed formats, where a float NaN is how numpy writes a missing value)
    a NaN is a missing cell instead. `capacity`, when known, is an upper bound on the rows:
    the matrix is filled in place, else batches are joined at the end.
    """
    width = len(header)
    if not header or len(set(header)) != width:
        return None
    values = np.empty((capacity, width), dtype=np.float32) if capacity is not None else None
    parts: list[np.ndarray] = []
    n_rows = 0
    for batch in batches:
        if batch is None or batch.num_columns != width:
            return None
        if values is not None and n_rows + batch.num_rows > len(values):
            return None
        block = (values[n_rows:n_rows + batch.num_rows] if values is not None
                 else np.empty((batch.num_rows, width), dtype=np.float32))
        for j, name in enumerate(header):
            index = batch.schema.get_field_index(name)
            if index < 0:
                return None
            row = 0
            column = batch.column(index)
            for chunk in (column.chunks if hasattr(column, "chunks") else [column]):
                numbers = _chunk_as_float64(chunk, nan_is_missing)
                if numbers is None:
                    return None
                block[row:row + len(numbers), j] = numbers
                row += len(numbers)
        if values is None:
            parts.append(block)
        n_rows += batch.num_rows
    if n_rows == 0:
        return None
    matrix = values[:n_rows] if values is not None else np.concatenate(parts) if len(parts) > 1 else parts[0]
    columns = [_numeric_column(name, matrix[:, j]) for j, name in enumerate(header)]
    return ParsedTable(columns=columns, values=matrix)


def _chunk_as_float64(chunk: Any, nan_is_missing: bool = False) -> np.ndarray | None:
    """Return a numeric pyarrow array as float64 (as float(cell) rounds), nulls as NaN.

    None when its type is not numeric or a present value is non-finite or beyond float32
    (a NaN stays NaN, a missing cell, with `nan_is_missing`).
    Read from its buffers: pyarrow's to_numpy imports pandas wherever pandas is
    installed, 0.7 s of the first upload in each API process.
    """
    kind = str(chunk.type)
    if kind == "null":
        return np.full(len(chunk), np.nan)
    dtype = _ARROW_NUMPY_TYPES.get(kind)
    if dtype is None:
        return None
    if len(chunk) == 0:
        return np.empty(0)
    validity, data = chunk.buffers()[:2]
    numbers = np.frombuffer(data, dtype=dtype, count=len(chunk), offset=chunk.offset * np.dtype(dtype).itemsize)
    numbers = numbers.astype(np.float64)  # a copy: the buffer is read-only, and nulls are written below
    present = None
    if chunk.null_count:
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        present = bits[chunk.offset:chunk.offset + len(chunk)].astype(bool)
        numbers[~present] = 0.0  # (a null's slot holds anything)
    # NaN compares false: non-finite values and those beyond float32 fall out here.
    within = np.abs(numbers) <= FLOAT32_MAX
    if not within.all() and not (nan_is_missing and (within | np.isnan(numbers)).all()):
        return None
    if present is not None:
        numbers[~present] = np.nan
    return numbers


def _numeric_column(name: str, column: np.ndarray) -> dict[str, Any]:
    """Describe a numeric column of the matrix (NaN = missing): its counts and role."""
    present = np.sort(column[~np.isnan(column)])
    distinct = int(np.count_nonzero(present[1:] != present[:-1])) + 1 if len(present) else 0
    return {"name": name, "kind": "numeric", "role": column_role("numeric", distinct, len(column)),
            "missing": len(column) - len(present), "distinct": distinct}


def column_role(kind: str, distinct: int, n_rows: int) -> str:
    """Return a column's role from its kind and distinct non-missing values (targets are set later)."""
    if distinct <= 1:
        return "constant"
    if kind == "string" and distinct > max(IDENTIFIER_MIN_DISTINCT, n_rows / 2):
        return "identifier"
    return "feature"


def json_cell(value: Any) -> str | None:
    """Return a JSON value as parse_rows' cell: its text, or None (missing) for null and NaN.

    The one conversion of every JSON shape (a body's `data` and `records`, a JSON or JSON
    Lines file): an integer is its digits ("7"), a float its shortest repr ("7.0", "0.1"),
    true/false the strings "true"/"false". NaN (Python's parser takes the token) is a
    missing cell, as pandas reads it; infinity stays a number the parser refuses. Callers
    refuse lists and objects first, naming them.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # float(): numpy's float64 (a float) has a repr of its own; float(repr(x)) == x
        return None if math.isnan(value) else repr(float(value))
    return str(value)  # an int (numpy scalars too, from Python callers)


def parse_json_rows(columns: list[str], data: list[list[Any]], max_columns: int = DEFAULT_MAX_COLUMNS,
                    max_distinct_strings: int = DEFAULT_MAX_DISTINCT_STRINGS,
                    max_categories: int = DEFAULT_MAX_CATEGORIES) -> ParsedTable:
    """Parse a table given as JSON column names (at most `max_columns`) and rows of numbers, strings or nulls.

    A null, NaN, or a string that is empty once stripped, is a missing cell (NA tokens are
    CSV's); cells become text as json_cell says.
    """
    if len(columns) > max_columns:
        raise TableError([{"field": "columns", "message": f"{len(columns):,} columns; "
                                                          f"MAX_COLUMNS is {max_columns:,}"}])

    def rows() -> Iterator[Row]:
        for index, row in enumerate(data):
            yield index + 1, f"data[{index}]", [json_cell(v) for v in row]

    return parse_rows([str(c).strip() for c in columns], rows, field="columns", row_field="data",
                      max_distinct_strings=max_distinct_strings, max_categories=max_categories)


def parse_rows(header: list[str], rows: Callable[[], Iterable[Row]], field: str,
               row_field: str | None, max_distinct_strings: int = DEFAULT_MAX_DISTINCT_STRINGS,
               na_values: frozenset[str] = frozenset({""}),
               max_categories: int = DEFAULT_MAX_CATEGORIES) -> ParsedTable:
    """Parse rows of string cells into a ParsedTable (two passes over `rows()`).

    A cell that is None, or that stripped is empty or in `na_values`, is missing.
    A column's kind is decided on its other cells: numeric when more than half of
    them are numbers (its other cells are then errors); datetime when every one is
    an ISO 8601 date or date-time; else string.

    Parameters
    ----------
    header
        The column names, stripped.
    rows
        Returns a fresh iterable of the data rows each time it is called.
    field
        The request field that errors about the table as a whole name.
    row_field
        The request field of the rows (`data` for JSON rows), or None when the
        rows come from the file named by `field`.
    max_distinct_strings
        The most distinct strings the first pass keeps across all columns
        (MAX_DISTINCT_STRINGS); past it the column holding the most is given up on
        (an identifier, not encoded).
    na_values
        Stripped cells that mean missing (NA_VALUES for CSV); the empty cell always does.
    max_categories
        The most categories a string column keeps (MAX_CATEGORIES); the rest fold into `other`.
    """
    _check_header(header, field)
    na_values = na_values | {""}
    survey = _survey_rows(header, rows, field, row_field, max_distinct_strings, na_values)
    if survey.n_rows == 0 and not survey.errors:
        raise TableError([{"field": row_field or field,
                           "message": "the table has a header but no data rows"}])
    kinds = survey.kinds()
    errors = survey.errors + _column_errors(header, kinds, survey, field, row_field)
    if errors:
        errors.sort(key=lambda e: e.get("row", 0))
        raise TableError(errors[:MAX_ERRORS])
    values, datetimes, codes = _fill_matrix(rows, survey.n_rows, kinds, survey.given_up, na_values)
    columns = _describe_columns(header, kinds, values, datetimes, codes, survey, max_categories)
    return ParsedTable(columns=columns, values=values, datetimes=datetimes)


def _error_field(field: str, row_field: str | None, number: int, column: int | None) -> str:
    """Return an error's field: `data[i][j]` / `data[i]` for JSON rows, else the file field."""
    if row_field is None:
        return field
    if column is None:
        return f"{row_field}[{number - 1}]"
    return f"{row_field}[{number - 1}][{column}]"


def _check_header(header: list[str], field: str) -> None:
    """Raise TableError naming every empty, NUL-holding or repeated column name."""
    errors: list[FieldError] = []
    seen: set[str] = set()
    for index, name in enumerate(header):
        if not name:
            errors.append({"field": field, "message": f"column {index + 1} has an empty name"})
        elif "\x00" in name:
            errors.append({"field": field, "message": f"column {index + 1}'s name holds a NUL byte; "
                                                      f"is this a binary file?"})
        elif name in seen:
            errors.append({"field": field, "message": f"column name {name!r} appears twice"})
        seen.add(name)
    if errors:
        raise TableError(errors)


@dataclass
class _RowSurvey:
    """What the first pass over the rows found, per column (lists indexed by column)."""

    n_rows: int
    # Errors of whole rows (a wrong field count) and NUL bytes, at most MAX_ERRORS.
    errors: list[FieldError]
    numeric_count: list[int]  # present cells that parse as numbers, finite or not
    filled_count: list[int]  # present (non-missing) cells
    # (row number, place, cell) of the first that is not a number float32 holds
    first_not_number: list[tuple[int, str, str] | None]
    maybe_datetime: list[bool]  # every present non-number cell so far is an ISO date or date-time
    has_time: list[bool]  # one of those gave a time of day
    strings: list[set[str]]  # distinct non-number cells of columns that may be strings
    given_up: list[bool]  # too many distinct strings to keep counting (MAX_DISTINCT_STRINGS)
    distinct_when_given_up: list[int]

    def kinds(self) -> list[str]:
        """Return each column's kind: numeric when most present cells are numbers, datetime, or string."""
        kinds = []
        for j, filled in enumerate(self.filled_count):
            if filled == 0 or self.numeric_count[j] * 2 > filled:
                kinds.append("numeric")
            elif self.numeric_count[j] == 0 and self.maybe_datetime[j] and not self.given_up[j]:
                kinds.append("datetime")
            else:
                kinds.append("string")
        return kinds


def _survey_rows(header: list[str], rows: Callable[[], Iterable[Row]], field: str,
                 row_field: str | None, max_distinct_strings: int, na_values: frozenset[str]) -> _RowSurvey:
    """First pass: count each column's numbers and present cells; note bad rows and first bad cells.

    Keeps the distinct strings of columns that may be string columns, at most
    `max_distinct_strings` in all: past that, the column holding the most is given up
    on (its strings dropped, no longer counted), so what the pass keeps stays within it.
    """
    width = len(header)
    errors: list[FieldError] = []
    numeric_count = [0] * width
    filled_count = [0] * width
    first_not_number: list[tuple[int, str, str] | None] = [None] * width
    maybe_datetime = [True] * width
    has_time = [False] * width
    strings: list[set[str]] = [set() for _ in range(width)]
    given_up = [False] * width
    distinct_when_given_up = [0] * width
    strings_kept = 0
    n_rows = 0
    for number, place, cells in rows():
        n_rows = number
        if len(cells) != width:
            if len(errors) < MAX_ERRORS:
                errors.append({"field": _error_field(field, row_field, number, None), "row": number,
                               "message": f"{place}: expected {width} fields, got {len(cells)}"})
            continue
        for j, raw in enumerate(cells):
            if raw is None:
                continue
            cell = raw.strip()
            if cell in na_values:
                continue
            filled_count[j] += 1
            value = _float_or_none(cell)
            if value is not None:
                # inf, 1e999 and 1e39 count too: numbers, if not ones the store holds as float32
                # (errors in a numeric column).
                numeric_count[j] += 1
                if math.isfinite(value) and abs(value) <= FLOAT32_MAX:
                    continue
            elif "\x00" in cell and len(errors) < MAX_ERRORS:
                errors.append({"field": _error_field(field, row_field, number, j), "row": number,
                               "column": header[j],
                               "message": f"{place}, column {header[j]!r}: a NUL byte; "
                                          f"is this a binary file?"})
            if first_not_number[j] is None:
                first_not_number[j] = (number, place, cell)
            if maybe_datetime[j] and value is None:
                moment = parse_datetime(cell)
                if moment is not None:
                    has_time[j] = has_time[j] or moment[1]
                    continue  # a datetime column keeps no strings
                maybe_datetime[j] = False
            if given_up[j]:
                continue
            kept = strings[j]
            before = len(kept)
            kept.add(cell)
            strings_kept += len(kept) - before
            if strings_kept > max_distinct_strings:
                # (among equals, the column where the count passed it)
                most = max(range(width), key=lambda k: (len(strings[k]), k == j))
                given_up[most] = True
                distinct_when_given_up[most] = len(strings[most])
                strings_kept -= len(strings[most])
                strings[most] = set()
    return _RowSurvey(n_rows, errors, numeric_count, filled_count, first_not_number, maybe_datetime, has_time,
                      strings, given_up, distinct_when_given_up)


def _column_errors(header: list[str], kinds: list[str], survey: _RowSurvey, field: str,
                   row_field: str | None) -> list[FieldError]:
    """Return each numeric column's first cell that is not a number float32 holds."""
    errors: list[FieldError] = []
    for j, name in enumerate(header):
        not_number = survey.first_not_number[j]
        if kinds[j] == "numeric" and not_number is not None:
            number, place, cell = not_number
            value = _float_or_none(cell)
            if value is not None and math.isfinite(value):
                problem = f"is beyond the float32 range ({FLOAT32_RANGE})"
            else:
                problem = f"is not {'a number' if value is None else 'a finite number'} (the column is numeric)"
            errors.append({"field": _error_field(field, row_field, number, j), "row": number, "column": name,
                           "message": f"{place}, column {name!r}: {cell[:50]!r} {problem}"})
    return errors


def _fill_matrix(rows: Callable[[], Iterable[Row]], n_rows: int, kinds: list[str], given_up: list[bool],
                 na_values: frozenset[str]) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, int]]]:
    """Second pass: fill the matrix in chunks, NaN for missing; string cells become codes in first-seen order.

    Returns the matrix, the datetime columns' seconds (None without any), and per column
    the codes of its strings (empty for other kinds, and for columns given up on, which
    stay NaN).
    """
    width = len(kinds)
    nan = math.nan
    values = np.empty((n_rows, width), dtype=np.float32)
    codes: list[dict[str, int]] = [{} for _ in range(width)]
    string_columns = [j for j in range(width) if kinds[j] == "string" and not given_up[j]]
    numeric_columns = [j for j in range(width) if kinds[j] == "numeric"]
    datetime_columns = [j for j in range(width) if kinds[j] == "datetime"]
    datetimes = np.empty((n_rows, len(datetime_columns))) if datetime_columns else None
    chunk: list[list[float]] = []
    moments: list[list[float]] = []
    start = 0

    def present(raw: str | None) -> str | None:
        if raw is None:
            return None
        cell = raw.strip()
        return None if cell in na_values else cell

    for _number, _place, cells in rows():
        row = [nan] * width
        for j in numeric_columns:
            cell = present(cells[j])
            if cell is not None:
                row[j] = float(cell)
        for j in string_columns:
            cell = present(cells[j])
            if cell is not None:
                table = codes[j]
                code = table.get(cell)
                if code is None:
                    code = table[cell] = len(table)
                row[j] = code
        if datetime_columns:
            seconds = [nan] * len(datetime_columns)
            for slot, j in enumerate(datetime_columns):
                cell = present(cells[j])
                if cell is not None:
                    seconds[slot] = parse_datetime(cell)[0]  # type: ignore[index]  # the survey parsed it
                    row[j] = seconds[slot] / SECONDS_PER_DAY
            moments.append(seconds)
        chunk.append(row)
        if len(chunk) == CHUNK_ROWS:
            values[start:start + len(chunk)] = chunk
            if datetimes is not None:
                datetimes[start:start + len(chunk)] = moments
                moments = []
            start += len(chunk)
            chunk = []
    if chunk:
        values[start:start + len(chunk)] = chunk
        if datetimes is not None:
            datetimes[start:start + len(chunk)] = moments
    return values, datetimes, codes


def _describe_columns(header: list[str], kinds: list[str], values: np.ndarray, datetimes: np.ndarray | None,
                      codes: list[dict[str, int]], survey: _RowSurvey, max_categories: int) -> list[dict[str, Any]]:
    """Describe each column (counts, role); recode string columns by sorted, folded categories.

    Sorted so that equal tables give equal bytes; beyond `max_categories` the most
    frequent values are kept (ties by value) and the rest recoded as OTHER_CATEGORY.
    """
    columns: list[dict[str, Any]] = []
    n_rows = values.shape[0]
    slot = 0
    for j, name in enumerate(header):
        if kinds[j] == "numeric":
            columns.append(_numeric_column(name, values[:, j]))
            continue
        if kinds[j] == "datetime":
            assert datetimes is not None
            described = _numeric_column(name, datetimes[:, slot])
            columns.append({**described, "kind": "datetime", "has_time": survey.has_time[j], "slot": slot})
            slot += 1
            continue
        missing = int(n_rows - survey.filled_count[j])
        if survey.given_up[j]:
            columns.append({"name": name, "kind": "string", "role": "identifier", "missing": missing,
                            "distinct": survey.distinct_when_given_up[j], "categories": [], "folded": 0,
                            "encoded": False})
            continue
        columns.append({"name": name, "kind": "string", "missing": missing, "distinct": len(codes[j]),
                        "role": column_role("string", len(codes[j]), n_rows),
                        **_recode_strings(values, j, codes[j], max_categories)})
    return columns


def _recode_strings(values: np.ndarray, j: int, codes: dict[str, int], max_categories: int) -> dict[str, Any]:
    """Recode column `j` from first-seen codes to sorted categories, folding the rarest; return its schema part."""
    column = values[:, j]
    present = ~np.isnan(column)
    first_seen = column[present].astype(np.int64)
    names = list(codes)  # in code order
    kept = names
    if len(names) > max_categories:
        counts = np.bincount(first_seen, minlength=len(names))
        order = sorted(range(len(names)), key=lambda code: (-counts[code], names[code]))
        kept = [names[code] for code in order[:max_categories]]
    categories = sorted(set(kept) | ({OTHER_CATEGORY} if len(kept) < len(names) else set()))
    position = {value: index for index, value in enumerate(categories)}
    other = position.get(OTHER_CATEGORY, -1)
    remap = np.array([position.get(value, other) for value in names], dtype=np.float32)
    column[present] = remap[first_seen]  # (a view: this writes the matrix)
    return {"categories": categories, "folded": len(names) - len(kept)}


def describe_target(table: ParsedTable, target: str | list[str] | None,
                    task: str | None) -> dict[str, Any]:
    """Choose features, targets, task and classes for a parsed table; say what was left out and why.

    `target` defaults to the last column; several comma-separated names make a
    multi-output regression. The task, when not given, is classification for a
    string target or an integer target with at most 20 distinct values, and
    regression otherwise; both are decided on the rows that have a target.

    Returns `features` (the non-target columns of role `feature`), `targets`, `task`,
    `classes`, `columns` (the table's, targets given role `target`),
    `n_rows_without_target` (rows missing any target: kept out of training) and
    `warnings` (sentences).
    """
    names = [c["name"] for c in table.columns]
    if target is None or (isinstance(target, str) and not target.strip()):
        targets = [names[-1]]
    elif isinstance(target, str):
        targets = [t.strip() for t in target.split(",") if t.strip()]
    else:
        targets = [str(t).strip() for t in target]
    errors: list[FieldError] = []
    if not targets:  # a list with no names, or a string of commas
        errors.append({"field": "target", "message": "name at least one target column"})
    for name in targets:
        if name not in names:
            errors.append({"field": "target", "message": f"unknown target column {name!r}; "
                                                         f"the columns are {', '.join(map(repr, names))}"})
    if len(set(targets)) != len(targets):
        errors.append({"field": "target", "message": "a target column is named twice"})
    if errors:
        raise TableError(errors)
    if len(targets) == len(names):
        raise TableError([{"field": "target", "message": "every column is a target; "
                                                         "at least one feature column is needed"}])
    target_columns = [table.columns[names.index(t)] for t in targets]
    for column in target_columns:
        if column["kind"] == "datetime" or column.get("encoded") is False:
            holds = "dates" if column["kind"] == "datetime" else "too many distinct strings"
            raise TableError([{"field": "target", "message": f"target {column['name']!r} holds {holds}; "
                                                             f"a target is numbers or labels"}])
    for column in target_columns:
        if column.get("folded"):
            raise TableError([{"field": "target", "message": f"target {column['name']!r} has {column['distinct']:,} "
                                                             f"distinct labels, more than MAX_CATEGORIES; a target's "
                                                             f"labels are never folded into {OTHER_CATEGORY!r}"}])
    target_matrix = table.values[:, [names.index(t) for t in targets]]
    with_target = ~np.isnan(target_matrix).any(axis=1)
    n_without = int(table.n_rows - with_target.sum())
    if not with_target.any():
        raise TableError([{"field": "target", "message": f"no row has a value for the target "
                                                         f"{', '.join(map(repr, targets))}"}])
    target_values = [target_matrix[with_target, k] for k in range(len(targets))]
    string_targets = [c["name"] for c in target_columns if c["kind"] == "string"]

    def integer_labels(values: np.ndarray) -> np.ndarray | None:
        if not np.all(np.floor(values) == values):
            return None
        return np.unique(values)

    if task is None:
        if string_targets:
            task = "classification"
        elif len(targets) == 1:
            labels = integer_labels(target_values[0])
            task = ("classification" if labels is not None
                    and len(labels) <= MAX_CLASSIFICATION_INTEGER_LABELS else "regression")
        else:
            task = "regression"
    classes: list[Any] | None = None
    if task == "regression":
        if string_targets:
            raise TableError([{"field": "task", "message": f"regression needs numeric targets; "
                                                           f"{string_targets[0]!r} holds strings"}])
    else:
        if len(targets) != 1:
            raise TableError([{"field": "target", "message": "classification takes one target column"}])
        column = target_columns[0]
        if column["kind"] == "string":
            classes = list(column["categories"])
        else:
            labels = integer_labels(target_values[0])
            if labels is None:
                raise TableError([{"field": "task", "message": f"target {targets[0]!r} has non-integer "
                                                               f"numbers; use task regression, or "
                                                               f"integer or string labels"}])
            classes = [int(v) for v in labels]
        if len(classes) < 2:
            raise TableError([{"field": "target", "message": f"target {targets[0]!r} has a single "
                                                             f"class; classification needs two or more"}])
    columns = [{**c, "role": "target"} if c["name"] in targets else c for c in table.columns]
    features = [c["name"] for c in columns if c.get("role", "feature") == "feature"]
    return {"features": features, "targets": targets, "task": task, "classes": classes, "columns": columns,
            "n_rows_without_target": n_without, "warnings": table_warnings(columns, table.n_rows, n_without)}


def table_warnings(columns: list[dict[str, Any]], n_rows: int, n_rows_without_target: int) -> list[str]:
    """Return the sentences that say which columns are left out of the features, and why, and what else to know."""
    warnings: list[str] = []
    for column in columns:
        name, role = column["name"], column.get("role", "feature")
        if role == "identifier" and column.get("encoded") is False:
            warnings.append(f"column {name!r} has more than {column['distinct']:,} distinct values: an "
                            f"identifier, stored without its values (MAX_DISTINCT_STRINGS), which no job can use")
        elif role == "identifier":
            warnings.append(f"column {name!r} has {column['distinct']:,} distinct values in {n_rows:,} rows: an "
                            f"identifier, left out of the features (name it in a job's `features` to use it)")
        elif role == "constant":
            what = "no values" if column.get("distinct", 0) == 0 else "a single value"
            warnings.append(f"column {name!r} has {what}: constant, left out of the features")
        if column.get("folded"):
            warnings.append(f"column {name!r}: its {column['folded']:,} rarest values are folded into "
                            f"the category {OTHER_CATEGORY!r} (MAX_CATEGORIES)")
    if n_rows_without_target:
        warnings.append(f"{n_rows_without_target:,} of {n_rows:,} rows have no target value: they are kept "
                        f"out of training and evaluation")
    return warnings
