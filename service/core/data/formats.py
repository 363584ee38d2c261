"""Uploaded tables in other formats than CSV: JSON, JSON Lines, Parquet; and which format a file is.

Each reader turns a file on disk into a ParsedTable through the parser's rules
(service.core.data.parsing.parse_rows), never holding the file's rows in memory:

- JSON: an array of objects (records), or an object with `columns` (names) and
  `data` (rows, each a list of cells) -- pandas' `orient="records"` and
  `orient="split"` (whose `index` is skipped). The file is decoded one record or
  row at a time, so a record is at most MAX_JSON_MB (as a JSON body is) and the
  file at most MAX_UPLOAD_MB (as a CSV file is).
- JSON Lines: one object per line; blank lines are skipped. A file whose first
  object holds only numbers and nulls is read by pyarrow's JSON reader in blocks
  (parsing.table_from_arrow); anything it does not take exactly as the line-by-line
  path would (a string, a new key, two objects on a line, an object over two lines,
  a bad line) goes through that path, which names the line at fault.
- Parquet: pyarrow.parquet, one batch of a row group at a time; an all-numeric
  file goes to table_from_arrow, any other through the row path with cells made
  from the Arrow values (numbers as text, null and a float NaN as missing, booleans
  as "true"/"false", dates and timestamps as ISO 8601 text, so the datetime rules apply).

For records (JSON or JSON Lines) the columns are the union of the objects' keys in
the order first seen; a key an object lacks is a missing cell. Cells become text by
parsing.json_cell, as a JSON body's do: a JSON null (or NaN) is missing; NA tokens
("NA", "null", ...) are CSV's only, as the contract says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from service.core.data import parsing
from service.core.data.parsing import ParsedTable, Row, TableError
from service.core.problems import FieldError
from service.core.settings import setting_default
from service.core.tenancy.limits import MB

FORMATS = ("csv", "json", "jsonl", "parquet")
# A file name's extension (lower case) -> its format; any other extension says nothing.
EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"
# How much of a file content detection reads: the first line, when it is shorter (a record).
SNIFF_BYTES = 1 << 20
# JSON text is decoded in steps of this many characters (a step grows to hold a long record).
JSON_STEP_CHARS = 1 << 20
# pyarrow's JSON reader takes this much text at a time (whole lines), as the CSV fast path does.
JSONL_BLOCK_BYTES = parsing.CSV_BLOCK_BYTES
PARQUET_BATCH_ROWS = 65_536
# Column chunks are read through a buffer of this size, page by page: unbuffered (pyarrow's
# default) a row group's chunks are read whole, and pandas writes 1M-row row groups (a 100 MB
# table: +183 MiB peak against +91 MiB, and 5x slower; benchmarks/upload.py).
PARQUET_BUFFER_BYTES = 1 << 20
# JSON's whitespace (RFC 8259): what may stand between values, and what a blank line holds.
JSON_WHITESPACE = " \t\r\n"
_WHITESPACE = re.compile(r"[ \t\r\n]*")
# A CSV cell takes at least two bytes (a character and a separator): a Parquet file,
# however well compressed, holds no more cells than a CSV file within MAX_UPLOAD_MB could.
BYTES_PER_CELL = 2


@dataclass(frozen=True)
class Limits:
    """The limits an upload is held to (the app's settings; the defaults are the settings' defaults)."""

    max_columns: int = setting_default("MAX_COLUMNS")
    max_distinct_strings: int = setting_default("MAX_DISTINCT_STRINGS")
    max_categories: int = setting_default("MAX_CATEGORIES")
    max_upload_mb: int = setting_default("MAX_UPLOAD_MB")
    max_json_mb: int = setting_default("MAX_JSON_MB")

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        """Read the limits from a mapping of settings (a Flask app's config)."""
        return cls(**{name: int(config[name.upper()]) for name in cls.__dataclass_fields__})

    @property
    def max_record_chars(self) -> int:
        """The longest JSON record or line: a JSON body's limit (MAX_JSON_MB)."""
        return self.max_json_mb * MB

    @property
    def max_cells(self) -> int:
        """The most cells (rows x columns) a Parquet file may hold."""
        return self.max_upload_mb * MB // BYTES_PER_CELL


def _error(field: str, message: str, **where: Any) -> TableError:
    error: FieldError = {"field": field, "message": message}
    error.update(where)  # type: ignore[typeddict-item]  # row / column, as parse_rows' errors have them
    return TableError([error])


# ---------------------------------------------------------------- format detection

def detect_format(path: str | Path, filename: str | None = None, given: str | None = None,
                  field: str = "format") -> str:
    """Return the upload's format: `given` (the `format` field), else the file name's extension, else content.

    Content: Parquet's magic bytes `PAR1`; else, after a BOM and whitespace, `[` is
    JSON; `{` is JSON Lines when the first line is a whole JSON object other than
    one with both `columns` and `data` keys (the other JSON shape, on one line),
    else JSON (an object over several lines); anything else is CSV.
    A `given` format not among FORMATS is a TableError naming `field`.
    """
    if given is not None and given.strip():
        name = given.strip().lower()
        if name not in FORMATS:
            raise _error(field, f"unknown format {given[:50]!r}; one of {', '.join(FORMATS)}")
        return name
    extension = Path(re.split(r"[/\\]", filename or "")[-1]).suffix.lower()
    if extension in EXTENSIONS:
        return EXTENSIONS[extension]
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    text = head.removeprefix(UTF8_BOM).lstrip(JSON_WHITESPACE.encode())
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        first = text.split(b"\n", 1)[0]
        try:
            value = json.loads(first)
        except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
            return "json"
        if isinstance(value, dict) and not {"columns", "data"} <= value.keys():
            return "jsonl"
        return "json"
    return "csv"


def parse_upload(path: str | Path, fmt: str, field: str = "file", limits: Limits = Limits(),
                 na_values: Iterable[str] | None = None) -> ParsedTable:
    """Parse an uploaded file of format `fmt` (one of FORMATS); `na_values` applies to CSV only.

    `na_values` with another format is a TableError naming `na_values`: JSON null and
    Parquet null are the missing cells there.
    """
    if na_values is not None and fmt != "csv":
        raise _error("na_values", f"applies to CSV files only; in {fmt} a null is a missing cell")
    if fmt == "csv":
        return parsing.parse_csv(path, field=field, max_columns=limits.max_columns,
                                 na_values=None if na_values is None else frozenset(na_values),
                                 max_distinct_strings=limits.max_distinct_strings,
                                 max_categories=limits.max_categories)
    readers: dict[str, Callable[[Path, str, Limits], ParsedTable]] = {
        "json": parse_json_file, "jsonl": parse_jsonl_file, "parquet": parse_parquet_file}
    return readers[fmt](Path(path), field, limits)


def parse_na_values(text: str, field: str = "na_values") -> frozenset[str]:
    """Read the `na_values` form field: a JSON list of strings, or else comma-separated tokens.

    Tokens are stripped (cells are matched stripped); an empty field means no tokens
    (only the empty cell is missing). A token holding a comma needs the JSON list.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            tokens = json.loads(stripped)
        except ValueError as exc:
            raise _error(field, f"not a JSON list of strings: {exc}") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise _error(field, "a JSON list must hold strings only")
    else:
        tokens = stripped.split(",") if stripped else []
    return frozenset(t.strip() for t in tokens) - {""}


# ---------------------------------------------------------------- cells and records

def _not_a_cell(field: str, number: int, place: str, column: str, value: Any) -> TableError:
    kind = "an object" if isinstance(value, dict) else "an array"
    return _error(field, f"{place}, column {column!r}: {kind} is not a cell; a cell is a number, a "
                         f"string, true/false or null", row=number, column=column)


def _record_cells(record: dict[str, Any], keys: list[str], header: list[str], field: str, number: int,
                  place: str) -> list[str | None]:
    cells: list[str | None] = []
    for key, name in zip(keys, header):
        value = record.get(key)
        if isinstance(value, (dict, list)):
            raise _not_a_cell(field, number, place, name, value)
        cells.append(parsing.json_cell(value))
    return cells


def _row_cells(row: list[Any], header: list[str], field: str, number: int, place: str) -> list[str | None]:
    cells: list[str | None] = []
    for j, value in enumerate(row):
        if isinstance(value, (dict, list)):
            raise _not_a_cell(field, number, place, header[j] if j < len(header) else f"field {j + 1}", value)
        cells.append(parsing.json_cell(value))
    return cells


# A source of records: a factory of (row number, place, object) for every record, in order.
Records = Callable[[], Iterator[tuple[int, str, Any]]]


def _union_of_keys(records: Records, field: str, limits: Limits) -> list[str]:
    """Return the records' keys in the order first seen; a non-object or one key too many is a TableError."""
    keys: dict[str, None] = {}
    for number, place, record in records():
        if not isinstance(record, dict):
            raise _error(field, f"{place}: expected an object (a record), got {_json_type(record)}", row=number)
        if not record.keys() <= keys.keys():
            keys.update(dict.fromkeys(record))
            if len(keys) > limits.max_columns:
                raise _error(field, f"{place}: the records have more than {limits.max_columns:,} keys in "
                                    f"all; MAX_COLUMNS is {limits.max_columns:,}", row=number)
    return list(keys)


def _parse_records(records: Records, field: str, row_field: str | None, limits: Limits,
                   keys: list[str] | None = None) -> ParsedTable:
    """Parse records (objects) through parse_rows: columns = union of keys, an absent key = missing.

    `keys`, when given, is that union already (a JSON body's records are gone through once to find it).
    """
    keys = _union_of_keys(records, field, limits) if keys is None else keys
    header = [key.strip() for key in keys]
    if not header:
        raise _error(row_field or field, "no record has a key; expected objects of column: value")

    def rows() -> Iterator[Row]:
        for number, place, record in records():
            yield number, place, _record_cells(record, keys, header, row_field or field, number, place)

    return parsing.parse_rows(header, rows, field=field, row_field=row_field,
                              max_distinct_strings=limits.max_distinct_strings, max_categories=limits.max_categories)


def parse_records(records: list[dict[str, Any]], field: str = "records", limits: Limits = Limits()) -> ParsedTable:
    """Parse a JSON body's `records` (a list of objects); errors name `records[i].key`, as pydantic's do."""
    def source() -> Iterator[tuple[int, str, Any]]:
        for index, record in enumerate(records):
            yield index + 1, f"{field}[{index}]", record

    keys = _union_of_keys(source, field, limits)
    try:
        return _parse_records(source, field, field, limits, keys)
    except TableError as error:
        # parse_rows names a cell records[i][j] (j: the column's index): say the key instead.
        cell = re.compile(rf"{re.escape(field)}\[(\d+)\]\[(\d+)\]")
        for item in error.errors:
            match = cell.fullmatch(item.get("field", ""))
            if match and int(match[2]) < len(keys):
                item["field"] = f"{field}[{match[1]}].{keys[int(match[2])]}"
        raise


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else "true/false" if isinstance(value, bool) else "a number"


# ---------------------------------------------------------------- JSON files

class _JsonText:
    """A JSON file decoded piece by piece: whitespace, single characters, and whole values one at a time.

    Only a window of the text is held: what is consumed is dropped as the window
    moves on, and a value may be at most `max_chars` long. Line numbers are
    counted as the text is consumed, for error messages.
    """

    def __init__(self, path: Path, field: str, max_chars: int) -> None:
        self.field = field
        self.max_chars = max_chars
        self.handle: IO[str] = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by close()
        self.text = ""
        self.position = 0
        self.eof = False
        self.line = 1  # the line of `counted` within the file
        self.counted = 0  # text[:counted] has been counted into `line`
        self.decoder = json.JSONDecoder()

    def close(self) -> None:
        self.handle.close()

    def _read(self, at_least: int) -> None:
        """Append at least `at_least` more characters (fewer at the end); drop what was consumed first."""
        if self.position > len(self.text) // 2:
            self.line_at(self.position)
            self.text = self.text[self.position:]
            self.counted -= self.position
            self.position = 0
        try:
            more = self.handle.read(at_least)
        except UnicodeDecodeError as exc:
            raise _error(self.field, f"the file is not UTF-8 text ({exc.reason}, near line "
                                     f"{self.line_at(len(self.text))})") from None
        if not more:
            self.eof = True
        self.text += more

    def line_at(self, position: int) -> int:
        """Return the line number at `position` of the window (positions only move forward)."""
        if position > self.counted:
            self.line += self.text.count("\n", self.counted, position)
            self.counted = position
        return self.line

    def where(self) -> str:
        return f"line {self.line_at(self.position)}"

    def peek(self) -> str:
        """Skip whitespace; return the next character, or "" at the end of the file."""
        while True:
            self.position = _WHITESPACE.match(self.text, self.position).end()  # type: ignore[union-attr]
            if self.position < len(self.text) or self.eof:
                return self.text[self.position:self.position + 1]
            self._read(JSON_STEP_CHARS)

    def expect(self, characters: str, what: str) -> str:
        """Consume the next character if it is one of `characters`; else a TableError saying `what` was expected."""
        character = self.peek()
        if not character or character not in characters:
            found = repr(character) if character else "the end of the file"
            raise _error(self.field, f"{self.where()}: expected {what}, found {found}")
        self.position += 1
        return character

    def value(self) -> Any:
        """Decode the next value (reading on while it is cut off by the window's end)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.position)
            except json.JSONDecodeError as exc:
                # Cut off by the window's end (the error near it, or a string not closed yet): read on.
                cut_off = (len(self.text) - exc.pos < JSON_STEP_CHARS
                           or exc.msg.startswith("Unterminated string"))
                if cut_off and not self.eof:
                    if len(self.text) - self.position > self.max_chars:
                        raise self._too_long() from None
                    self._read(max(JSON_STEP_CHARS, len(self.text) - self.position))
                    continue
                raise _error(self.field, f"line {self.line_at(exc.pos)}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise _error(self.field, f"{self.where()}: a value nested too deeply") from None
            if end == len(self.text) and not self.eof:  # a number may go on past the window
                self._read(JSON_STEP_CHARS)
                continue
            if end - self.position > self.max_chars:
                raise self._too_long()
            self.position = end
            return value

    def _too_long(self) -> TableError:
        return _error(self.field, f"{self.where()}: a record longer than {self.max_chars // MB:,} MB "
                                  f"(MAX_JSON_MB); split it, or send the table as CSV or Parquet")

    def elements(self) -> Iterator[tuple[int, Any]]:
        """Decode the array that starts here one element at a time: (line of the element, element)."""
        self.expect("[", "'['")
        if self.peek() == "]":
            self.position += 1
            return
        while True:
            self.peek()
            line = self.line_at(self.position)
            yield line, self.value()
            if self.expect(",]", "',' or ']'") == "]":
                return

    def end(self) -> None:
        """Check that nothing but whitespace follows."""
        if self.peek():
            raise _error(self.field, f"{self.where()}: more after the end of the JSON value (JSON Lines? "
                                     f"name the file .jsonl, or send format=jsonl)")


def _open_json(path: Path, field: str, limits: Limits) -> _JsonText:
    return _JsonText(path, field, limits.max_record_chars)


def parse_json_file(path: Path, field: str = "file", limits: Limits = Limits()) -> ParsedTable:
    """Parse a JSON file: an array of records, or an object with `columns` and `data` (pandas' split).

    Raises
    ------
    TableError
        Naming `field`, the line and what is wrong, or (from parse_rows) the cells at fault.
    """
    probe = _open_json(path, field, limits)
    try:
        first = probe.peek()
    finally:
        probe.close()
    if first == "[":
        return _parse_records(_json_records(path, field, limits), field, None, limits)
    if first == "{":
        return _parse_split(path, field, limits)
    raise _error(field, "expected a JSON array of records ([{column: value, ...}, ...], pandas' "
                        "orient='records') or an object with 'columns' and 'data' (orient='split')")


def _json_records(path: Path, field: str, limits: Limits) -> Records:
    def records() -> Iterator[tuple[int, str, Any]]:
        text = _open_json(path, field, limits)
        try:
            for number, (line, record) in enumerate(text.elements(), start=1):
                yield number, f"record {number} (line {line})", record
            text.end()
        finally:
            text.close()

    return records


def _parse_split(path: Path, field: str, limits: Limits) -> ParsedTable:
    """Parse {"columns": [...], "data": [[...], ...]}; other keys (pandas' `index`) are skipped."""

    def walk(on_data: Callable[[_JsonText], Iterator[Row]] | None) -> Iterator[Row]:
        """Go through the object's keys; `on_data` streams the rows (None: skip them, reading `columns`)."""
        text = _open_json(path, field, limits)
        try:
            text.expect("{", "'{'")
            if text.peek() == "}":
                text.position += 1
            else:
                while True:
                    if text.peek() != '"':
                        text.expect('"', "a key in double quotes")
                    key = text.value()
                    text.expect(":", "':'")
                    if key == "data" and on_data is not None:
                        yield from on_data(text)
                    elif key == "columns":
                        found["columns"] = text.value()
                    elif text.peek() == "[":  # (data while reading columns; index): one element at a time
                        for _ in text.elements():
                            pass
                        found[key] = None
                    else:
                        found[key] = text.value()
                    found.setdefault(key, None)
                    if text.expect(",}", "',' or '}'") == "}":
                        break
            text.end()
        finally:
            text.close()

    found: dict[str, Any] = {}
    for _ in walk(None):
        pass
    missing = [key for key in ("columns", "data") if key not in found]
    if missing:
        raise _error(field, f"the object has no {' or '.join(map(repr, missing))}; expected {{\"columns\": "
                            f"[names], \"data\": [[cells], ...]}} (pandas' orient='split') or an array of "
                            f"records")
    columns = found["columns"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _error(field, "'columns' must be an array of column names (strings)")
    if len(columns) > limits.max_columns:
        raise _error(field, f"{len(columns):,} columns; MAX_COLUMNS is {limits.max_columns:,}")
    header = [c.strip() for c in columns]

    def data_rows(text: _JsonText) -> Iterator[Row]:
        for number, (line, row) in enumerate(text.elements(), start=1):
            place = f"data[{number - 1}] (line {line})"
            if not isinstance(row, list):
                raise _error(field, f"{place}: expected an array of cells, got {_json_type(row)}", row=number)
            yield number, place, _row_cells(row, header, field, number, place)

    return parsing.parse_rows(header, lambda: walk(data_rows), field=field, row_field=None,
                              max_distinct_strings=limits.max_distinct_strings, max_categories=limits.max_categories)


# ---------------------------------------------------------------- JSON Lines

def _jsonl_lines(path: Path, field: str, limits: Limits) -> Records:
    """A factory of (row number, "line N", object) for each non-blank line of a JSON Lines file."""

    def records() -> Iterator[tuple[int, str, Any]]:
        with path.open("rb") as handle:
            number = 0
            for line_number, line in enumerate(iter(lambda: handle.readline(limits.max_record_chars + 1), b""),
                                               start=1):
                if len(line) > limits.max_record_chars:
                    raise _error(field, f"line {line_number} is longer than {limits.max_json_mb:,} MB "
                                        f"(MAX_JSON_MB); one record a line", row=number + 1)
                if line_number == 1:
                    line = line.removeprefix(UTF8_BOM)
                if not line.strip(JSON_WHITESPACE.encode()):
                    continue
                number += 1
                yield number, f"line {line_number}", _json_line(line, line_number, number, field)

    return records


def _json_line(line: bytes, line_number: int, number: int, field: str) -> Any:
    """Decode one line: orjson where it takes it, else the json module (NaN, huge integers; its error)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        message = f"line {line_number}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        message = f"line {line_number}: not a JSON object ({exc.msg}, column {exc.colno})"
    except RecursionError:
        message = f"line {line_number}: a value nested too deeply"
    raise _error(field, message, row=number)


def parse_jsonl_file(path: Path, field: str = "file", limits: Limits = Limits()) -> ParsedTable:
    """Parse a JSON Lines file (one object a line), by pyarrow when it is all numbers, else line by line."""
    table = _numeric_jsonl(path, limits)
    if table is not None:
        return table
    return _parse_records(_jsonl_lines(path, field, limits), field, None, limits)


def _first_object(path: Path, limits: Limits) -> dict[str, Any] | None:
    """Return the first non-blank line's object, or None where it is not one (the row path will say why)."""
    with path.open("rb") as handle:
        for index, line in enumerate(iter(lambda: handle.readline(limits.max_record_chars + 1), b"")):
            if len(line) > limits.max_record_chars:
                return None
            line = line.removeprefix(UTF8_BOM) if index == 0 else line
            if line.strip(JSON_WHITESPACE.encode()):
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return None
                return value if isinstance(value, dict) else None
    return None


def _numeric_jsonl(path: Path, limits: Limits) -> ParsedTable | None:
    """Read a JSON Lines file of numbers and nulls with pyarrow's JSON reader; None when it needs the row path.

    The row path defines the rules; this one takes only files on which both agree.
    The first object's keys are the schema (every column float64), so that pyarrow never
    infers one: a later key outside it, a string, a boolean, a nested value or a line
    that is not JSON fails the block. Each block's rows must number its non-blank lines:
    two objects on a line, or one over two lines, go to the row path, which refuses them.
    """
    first = _first_object(path, limits)
    if (first is None or not first or len(first) > limits.max_columns
            or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                       for v in first.values())):
        return None
    keys = list(first)
    header = [key.strip() for key in keys]
    if any(not name or "\x00" in name for name in header):
        return None  # names the row path refuses (table_from_arrow checks repeats)
    import pyarrow as pa  # noqa: PLC0415 - only uploads need it; workers never load it
    import pyarrow.json as pa_json  # noqa: PLC0415

    schema = pa.schema([(key, pa.float64()) for key in keys])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    pool = pa.system_memory_pool()
    whitespace = JSON_WHITESPACE.encode()

    def batches() -> Iterator[Any]:
        with path.open("rb") as handle:
            for view in parsing.whole_line_blocks(handle, JSONL_BLOCK_BYTES):
                if view is None:
                    yield None
                    return
                text = view.tobytes()
                lines = sum(1 for line in text.split(b"\n") if line.strip(whitespace))
                if lines == 0:
                    continue
                try:
                    table = pa_json.read_json(pa.BufferReader(text), parse_options=options, memory_pool=pool)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    yield None
                    return
                if table.num_rows != lines:
                    yield None
                    return
                yield table.select(keys).rename_columns(header)  # (in the schema's order already)
                del table
                pool.release_unused()  # hand the block's memory back to the OS, not to the next peak

    with path.open("rb") as handle:  # an upper bound on the rows, so the matrix is filled in place
        capacity = sum(block.count(b"\n") for block in iter(lambda: handle.read(JSONL_BLOCK_BYTES), b"")) + 1
    return parsing.table_from_arrow(header, batches(), capacity=capacity, nan_is_missing=True)


# ---------------------------------------------------------------- Parquet

def parse_parquet_file(path: Path, field: str = "file", limits: Limits = Limits()) -> ParsedTable:
    """Parse a Parquet file one batch at a time: all-numeric by table_from_arrow, else through parse_rows.

    The columns are counted (MAX_COLUMNS) and the cells (rows x columns, at most what a
    CSV within MAX_UPLOAD_MB could hold) from the file's footer, before a row is read.
    """
    import pyarrow as pa  # noqa: PLC0415 - only uploads need it
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        reader = pq.ParquetFile(path, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _error(field, f"not a readable Parquet file ({str(exc)[:200]})") from None
    with reader:
        schema = reader.schema_arrow
        if len(schema) > limits.max_columns:
            raise _error(field, f"the file has {len(schema):,} columns; MAX_COLUMNS is {limits.max_columns:,}")
        n_rows = reader.metadata.num_rows
        if n_rows * max(len(schema), 1) > limits.max_cells:
            raise _error(field, f"the file holds {n_rows:,} rows x {len(schema):,} columns, more cells than "
                                f"{limits.max_cells:,} (what a CSV within MAX_UPLOAD_MB could hold)")
        header = [name.strip() for name in schema.names]
        converters = [_parquet_converter(schema.field(j), header[j], field) for j in range(len(schema))]

        def batches(reader: Any) -> Iterator[Any]:
            for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield pa.RecordBatch.from_arrays(batch.columns, names=header)

        def read(make: Callable[[Any], Iterator[Any]]) -> Iterator[Any]:
            # A fresh reader per pass: a pass abandoned early leaves nothing open.
            with pq.ParquetFile(path, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False) as again:
                try:
                    yield from make(again)
                except (pa.ArrowException, OSError) as exc:
                    raise _error(field, f"the Parquet file cannot be read ({str(exc)[:200]})") from None

        numeric = all(pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_null(f.type)
                      for f in schema)
        if numeric and n_rows and all(name and "\x00" not in name for name in header):
            table = parsing.table_from_arrow(header, read(batches), capacity=n_rows, nan_is_missing=True)
            if table is not None:
                return table

    def rows() -> Iterator[Row]:
        number = 0
        for batch in read(batches):
            try:
                columns = [convert(batch.column(j)) for j, convert in enumerate(converters)]
            except (pa.ArrowException, ValueError, OverflowError) as exc:  # a date beyond year 9999, say
                raise _error(field, f"rows {number + 1:,} to {number + batch.num_rows:,}: a value cannot be "
                                    f"read ({str(exc)[:200]})") from None
            for cells in zip(*columns):
                number += 1
                yield number, f"row {number}", list(cells)

    return parsing.parse_rows(header, rows, field=field, row_field=None,
                              max_distinct_strings=limits.max_distinct_strings, max_categories=limits.max_categories)


def _parquet_converter(arrow_field: Any, name: str, field: str) -> Callable[[Any], list[str | None]]:
    """Return the function that turns one column of a batch into cells; a type no cell holds is a TableError."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    kind = arrow_field.type
    if pa.types.is_dictionary(kind):
        inner = _parquet_converter(pa.field(arrow_field.name, kind.value_type), name, field)
        return lambda column: inner(pc.cast(column, kind.value_type))
    if pa.types.is_null(kind):
        return lambda column: [None] * len(column)
    if pa.types.is_boolean(kind):
        return lambda column: [None if v is None else "true" if v else "false" for v in column.to_pylist()]
    if pa.types.is_floating(kind):
        # (float16 values come back as numpy scalars: float() first; json_cell's repr keeps float64
        # exactly and makes a NaN, how numpy writes a missing float, a missing cell)
        return lambda column: [None if v is None else parsing.json_cell(float(v)) for v in column.to_pylist()]
    if pa.types.is_integer(kind) or pa.types.is_decimal(kind):
        return lambda column: [None if v is None else str(v) for v in column.to_pylist()]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return lambda column: column.to_pylist()
    if pa.types.is_timestamp(kind):
        # Whole microseconds: Python's datetime holds no finer (the parser's seconds are float64 anyway).
        micro = pa.timestamp("us", tz=kind.tz)
        return lambda column: [None if v is None else v.isoformat()
                               for v in pc.cast(column, micro, safe=False).to_pylist()]
    if pa.types.is_date(kind) or pa.types.is_time(kind):
        return lambda column: [None if v is None else v.isoformat() for v in column.to_pylist()]
    raise _error(field, f"column {name!r} is of Parquet/Arrow type {kind}, which no table cell holds; "
                        f"use numbers, strings, booleans, dates or timestamps", column=name)
