"""Parse uploaded tables (CSV files, JSON rows) into a float32 matrix plus a column schema.

Numeric columns hold their values; string columns hold the index of the cell's
value in the column's sorted `categories`. Two passes over the rows keep memory
at the size of the final matrix: the first decides each column's kind and finds
every bad cell, the second fills the matrix.

A CSV file whose every column is numeric (the common large upload) is read by
pyarrow's multi-threaded reader instead, about 10x faster; anything else that
reader does not take cleanly (strings, empty cells, ragged rows, non-finite
numbers, numbers beyond float32) goes through the csv-module path above, which
reports the errors.

A table has at most MAX_COLUMNS columns, counted before anything else is read: a
CSV header's fields are counted in the file itself, so that a header of millions
of names is refused without the csv module building their list. The first pass
keeps each column's distinct strings (up to one past MAX_CATEGORIES) and at most
MAX_DISTINCT_STRINGS of them across all columns: past that the table is refused
there, so that 10,000 columns of 10,000 strings never fill memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import mmap
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.core.problems import FieldError, FieldErrors
from service.core.settings import setting_default

MAX_CATEGORIES = 10_000
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
# One field of a CSV record as the csv module reads it (excel dialect): a quoted part
# ("" is a quote within it) and what follows up to the separator, or an unquoted run
# (where a quote is a character). Unrolled, so that an unclosed quote cannot backtrack.
CSV_FIELD = re.compile(rb'"[^"]*(?:""[^"]*)*"[^,\r\n]*|[^,\r\n]*')
CSV_BLANK_LINES = re.compile(rb"[\r\n]*")

# A row as the parser sees it: (1-based data row, where it is for humans, cells).
Row = tuple[int, str, list[str]]


class TableError(FieldErrors):
    """The table cannot be used; `errors` names every row and column at fault."""


@dataclass
class ParsedTable:
    """A parsed table: one float32 matrix and a schema per column."""

    columns: list[dict[str, Any]]
    values: np.ndarray

    @property
    def n_rows(self) -> int:
        """Return the number of data rows."""
        return int(self.values.shape[0])

    def write_npz(self, handle: IO[bytes]) -> None:
        """Write the table as .npz to a seekable binary file (deterministic bytes, so they can be hashed).

        Uncompressed (np.savez): deflate gains little on float32 data and costs more
        than the whole parse (docs/performance.md, "Uploads").
        """
        np.savez(handle, values=self.values, columns=np.array(json.dumps(self.columns)))

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
            return cls(columns=json.loads(str(npz["columns"])), values=npz["values"])


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
              max_distinct_strings: int = DEFAULT_MAX_DISTINCT_STRINGS) -> ParsedTable:
    """Parse a CSV file with a header row of at most `max_columns` names (see parse_rows for the rest)."""
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
    table = _parse_numeric_csv(Path(path), header)
    if table is not None:
        return table
    return parse_rows(header, rows, field=field, row_field=None, max_distinct_strings=max_distinct_strings)


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


def _parse_numeric_csv(path: Path, header: list[str]) -> ParsedTable | None:
    """Read an all-numeric CSV with pyarrow; None when the table needs the csv-module path.

    That path defines the rules; this one only takes files on which both agree:
    the same stripped header, no quotes, every column int64 or double, every value
    finite and within float32, at least one data row. The file is read in blocks of whole lines into a
    matrix sized by its line count, so memory stays near the matrix itself.
    """
    # Names the csv-module path refuses (empty, repeated, holding a NUL) are refused there.
    if not header or any(not name or "\x00" in name for name in header) or len(set(header)) != len(header):
        return None
    import pyarrow as pa  # noqa: PLC0415 - only uploads need it; workers never load it
    import pyarrow.csv as pa_csv  # noqa: PLC0415

    # No null markers: an empty cell or "NA" makes a string column, hence the slow path.
    convert = pa_csv.ConvertOptions(null_values=[], strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
    read = pa_csv.ReadOptions(column_names=header)  # the header row is skipped below
    pool = pa.system_memory_pool()
    with path.open("rb") as handle:
        lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(CSV_BLOCK_BYTES), b"")) + 1
        handle.seek(0)
        while (line := handle.readline()) and not line.strip():  # blank lines, then the header row
            pass
        values = np.empty((lines, len(header)), dtype=np.float32)
        n_rows = 0
        while block := handle.read(CSV_BLOCK_BYTES):
            cut = len(block)
            if cut == CSV_BLOCK_BYTES:  # end on a whole line; the rest is read again next time
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    return None
                handle.seek(cut - len(block), os.SEEK_CUR)
            if block.find(b'"', 0, cut) != -1:
                return None  # a quoted field may hold a newline: leave it to the csv module
            text = memoryview(block)[:cut]
            try:
                table = pa_csv.read_csv(pa.BufferReader(text), read_options=read, convert_options=convert,
                                        memory_pool=pool)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if not bytes(text).strip():
                    continue  # only blank lines
                return None
            if n_rows + table.num_rows > lines or not all(
                    pa.types.is_int64(t) or pa.types.is_float64(t) for t in table.schema.types):
                return None  # (more rows than newlines: lines end in a lone CR)
            for j in range(table.num_columns):
                row = n_rows
                for chunk in table.column(j).chunks:
                    column = _chunk_as_float64(chunk)
                    # NaN compares false: non-finite values and those beyond float32 fall out here.
                    if column is None or not (np.abs(column) <= FLOAT32_MAX).all():
                        return None
                    values[row:row + len(column), j] = column
                    row += len(column)
            n_rows += table.num_rows
            del table
            pool.release_unused()  # hand the block's memory back to the OS, not to the next peak
    if n_rows == 0:
        return None
    return ParsedTable(columns=[{"name": name, "kind": "numeric"} for name in header],
                       values=values[:n_rows])


def _chunk_as_float64(chunk: Any) -> np.ndarray | None:
    """Return an int64 or double pyarrow array as float64 (as float(cell) rounds), or None if it has nulls.

    Read from its data buffer: pyarrow's to_numpy imports pandas wherever pandas
    is installed, 0.7 s of the first upload in each API process.
    """
    if chunk.null_count:
        return None
    if len(chunk) == 0:
        return np.empty(0)
    dtype = np.int64 if str(chunk.type) == "int64" else np.float64  # the caller let only these through
    data = np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * 8)
    return data.astype(np.float64, copy=False)


def _json_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return repr(value)
    return str(value)


def parse_json_rows(columns: list[str], data: list[list[Any]], max_columns: int = DEFAULT_MAX_COLUMNS,
                    max_distinct_strings: int = DEFAULT_MAX_DISTINCT_STRINGS) -> ParsedTable:
    """Parse a table given as JSON column names (at most `max_columns`) and rows of numbers, strings or nulls."""
    if len(columns) > max_columns:
        raise TableError([{"field": "columns", "message": f"{len(columns):,} columns; "
                                                          f"MAX_COLUMNS is {max_columns:,}"}])

    def rows() -> Iterator[Row]:
        for index, row in enumerate(data):
            yield index + 1, f"data[{index}]", [_json_cell(v) for v in row]

    return parse_rows([str(c).strip() for c in columns], rows, field="columns", row_field="data",
                      max_distinct_strings=max_distinct_strings)


def parse_rows(header: list[str], rows: Callable[[], Iterable[Row]], field: str,
               row_field: str | None, max_distinct_strings: int = DEFAULT_MAX_DISTINCT_STRINGS) -> ParsedTable:
    """Parse rows of string cells into a ParsedTable (two passes over `rows()`).

    A column is numeric when more than half of its non-empty cells are finite
    numbers; its other cells are then errors. Otherwise it is a string column.
    Empty cells are errors in every column.

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
        (MAX_DISTINCT_STRINGS); one more is a TableError naming `field` and the column.
    """
    _check_header(header, field)
    survey = _survey_rows(header, rows, field, row_field, max_distinct_strings)
    if survey.n_rows == 0 and not survey.errors:
        raise TableError([{"field": row_field or field,
                           "message": "the table has a header but no data rows"}])
    kinds = survey.kinds()
    errors = survey.errors + _column_errors(header, kinds, survey, field, row_field)
    if errors:
        errors.sort(key=lambda e: e.get("row", 0))
        raise TableError(errors[:MAX_ERRORS])
    values, codes = _fill_matrix(rows, survey.n_rows, kinds)
    return ParsedTable(columns=_sort_categories(header, kinds, values, codes), values=values)


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
    numeric_count: list[int]  # non-empty cells that parse as numbers, finite or not
    filled_count: list[int]  # non-empty cells
    first_missing: list[tuple[int, str] | None]  # (row number, place) of the first empty cell
    # (row number, place, cell) of the first that is not a number float32 holds
    first_not_number: list[tuple[int, str, str] | None]
    strings: list[set[str]]  # distinct non-number cells, up to one past MAX_CATEGORIES

    def kinds(self) -> list[str]:
        """Return each column's kind: numeric when most of its filled cells are numbers, else string."""
        return ["numeric" if self.numeric_count[j] * 2 > self.filled_count[j] or self.filled_count[j] == 0
                else "string" for j in range(len(self.filled_count))]


def _survey_rows(header: list[str], rows: Callable[[], Iterable[Row]], field: str,
                 row_field: str | None, max_distinct_strings: int) -> _RowSurvey:
    """First pass: count each column's numbers and filled cells; note bad rows and first bad cells.

    Raises TableError as soon as the columns' distinct strings, all together, are more
    than `max_distinct_strings`: what the pass keeps stays within it.
    """
    width = len(header)
    errors: list[FieldError] = []
    numeric_count = [0] * width
    filled_count = [0] * width
    first_missing: list[tuple[int, str] | None] = [None] * width
    first_not_number: list[tuple[int, str, str] | None] = [None] * width
    strings: list[set[str]] = [set() for _ in range(width)]
    strings_kept = 0
    n_rows = 0
    for number, place, cells in rows():
        n_rows = number
        if len(cells) != width:
            if len(errors) < MAX_ERRORS:
                errors.append({"field": _error_field(field, row_field, number, None), "row": number,
                               "message": f"{place}: expected {width} fields, got {len(cells)}"})
            continue
        for j, cell in enumerate(cells):
            cell = cell.strip()
            if not cell:
                if first_missing[j] is None:
                    first_missing[j] = (number, place)
                continue
            filled_count[j] += 1
            value = _float_or_none(cell)
            if value is not None:
                # nan, inf, 1e999 and 1e39 count too: numbers, if not ones the store holds as float32
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
            kept = strings[j]
            if len(kept) <= MAX_CATEGORIES:
                before = len(kept)
                kept.add(cell)
                strings_kept += len(kept) - before
                if strings_kept > max_distinct_strings:
                    raise TableError([{"field": field, "row": number, "column": header[j], "message": (
                        f"{place}, column {header[j]!r}: the table has more than {max_distinct_strings:,} "
                        f"distinct strings in all (MAX_DISTINCT_STRINGS); drop string columns or encode "
                        f"them as numbers")}])
    return _RowSurvey(n_rows, errors, numeric_count, filled_count, first_missing, first_not_number, strings)


def _column_errors(header: list[str], kinds: list[str], survey: _RowSurvey, field: str,
                   row_field: str | None) -> list[FieldError]:
    """Return each column's errors: its first empty cell, its first non-number if numeric, too many strings."""
    errors: list[FieldError] = []
    for j, name in enumerate(header):
        missing = survey.first_missing[j]
        if missing is not None:
            number, place = missing
            errors.append({"field": _error_field(field, row_field, number, j), "row": number, "column": name,
                           "message": f"{place}, column {name!r}: missing value"})
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
        if kinds[j] == "string" and len(survey.strings[j]) > MAX_CATEGORIES:
            errors.append({"field": field, "column": name,
                           "message": f"column {name!r} has more than {MAX_CATEGORIES} distinct "
                                      f"strings; drop it or encode it as numbers"})
    return errors


def _fill_matrix(rows: Callable[[], Iterable[Row]], n_rows: int,
                 kinds: list[str]) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Second pass: fill the matrix in chunks; string cells become codes in first-seen order.

    Returns the matrix and, per column, the codes of its strings (empty for numeric columns).
    """
    width = len(kinds)
    values = np.empty((n_rows, width), dtype=np.float32)
    codes: list[dict[str, int]] = [{} for _ in range(width)]
    string_columns = [j for j in range(width) if kinds[j] == "string"]
    numeric_columns = [j for j in range(width) if kinds[j] == "numeric"]
    chunk: list[list[float]] = []
    start = 0
    for _number, _place, cells in rows():
        row = [0.0] * width
        for j in numeric_columns:
            row[j] = float(cells[j])
        for j in string_columns:
            cell = cells[j].strip()
            table = codes[j]
            code = table.get(cell)
            if code is None:
                code = table[cell] = len(table)
            row[j] = code
        chunk.append(row)
        if len(chunk) == CHUNK_ROWS:
            values[start:start + len(chunk)] = chunk
            start += len(chunk)
            chunk = []
    if chunk:
        values[start:start + len(chunk)] = chunk
    return values, codes


def _sort_categories(header: list[str], kinds: list[str], values: np.ndarray,
                     codes: list[dict[str, int]]) -> list[dict[str, Any]]:
    """Recode each string column by its sorted categories (so equal tables give equal bytes); return the schema."""
    columns: list[dict[str, Any]] = []
    for j, name in enumerate(header):
        if kinds[j] == "numeric":
            columns.append({"name": name, "kind": "numeric"})
            continue
        categories = sorted(codes[j])
        remap = np.empty(len(categories), dtype=np.float32)
        for new, value in enumerate(categories):
            remap[codes[j][value]] = new
        values[:, j] = remap[values[:, j].astype(np.int64)]
        columns.append({"name": name, "kind": "string", "categories": categories})
    return columns


def describe_target(table: ParsedTable, target: str | list[str] | None,
                    task: str | None) -> dict[str, Any]:
    """Choose features, targets, task and classes for a parsed table.

    `target` defaults to the last column; several comma-separated names make a
    multi-output regression. The task, when not given, is classification for a
    string target or an integer target with at most 20 distinct values, and
    regression otherwise.
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
    features = [n for n in names if n not in targets]
    if not features:
        raise TableError([{"field": "target", "message": "every column is a target; "
                                                         "at least one feature column is needed"}])
    target_columns = [table.columns[names.index(t)] for t in targets]
    target_values = [table.values[:, names.index(t)] for t in targets]
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
    if task == "regression":
        if string_targets:
            raise TableError([{"field": "task", "message": f"regression needs numeric targets; "
                                                           f"{string_targets[0]!r} holds strings"}])
        return {"features": features, "targets": targets, "task": task, "classes": None}
    if len(targets) != 1:
        raise TableError([{"field": "target", "message": "classification takes one target column"}])
    column = target_columns[0]
    if column["kind"] == "string":
        classes: list[Any] = list(column["categories"])
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
    return {"features": features, "targets": targets, "task": task, "classes": classes}
