"""Uploads as JSON, JSON Lines and Parquet (and CSV), the format told by field, name or content; records bodies."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.core.data import formats, parsing
from service.core.data.formats import Limits, detect_format, parse_upload
from service.core.data.parsing import TableError, describe_target, parse_json_rows
from service.core.data.preprocessing import Preprocessor, fit
from tests.helpers import mlp, problem, train

# One table with a missing cell in every column but the target: numbers, strings, date-times.
COLUMNS = ["size", "color", "seen", "label"]
ROWS: list[list[object]] = [
    [1.5, "red", "2024-01-02T03:04:05", "a"],
    [None, "blue", "2024-02-03T00:00:00", "b"],
    [3, None, "2024-03-04T12:30:00", "a"],
    [4.25, "red", None, "b"],
    [-2, "green", "2024-05-06T07:08:09", "a"],
    [7, "blue", "2024-06-07T10:11:12", "b"],
]


def as_csv(rows: list[list[object]] = ROWS, missing: str = "") -> bytes:
    def cell(value: object) -> str:
        return missing if value is None else str(value)
    return ("\n".join([",".join(COLUMNS)] + [",".join(cell(v) for v in row) for row in rows]) + "\n").encode()


def as_records(rows: list[list[object]] = ROWS, absent: bool = True) -> list[dict[str, object]]:
    """Rows as objects; a missing cell is an absent key (`absent`) or null."""
    return [{k: v for k, v in zip(COLUMNS, row) if v is not None or not absent} for row in rows]


def as_json(rows: list[list[object]] = ROWS) -> bytes:
    return json.dumps(as_records(rows), indent=2).encode()


def as_split(rows: list[list[object]] = ROWS) -> bytes:
    """pandas' orient='split', index and all."""
    return json.dumps({"columns": COLUMNS, "index": list(range(len(rows))), "data": rows}).encode()


def as_jsonl(rows: list[list[object]] = ROWS) -> bytes:
    return ("\n".join(json.dumps(r) for r in as_records(rows)) + "\n").encode()


def as_parquet(table: pa.Table | None = None, **options: object) -> bytes:
    if table is None:
        seen = [None if r[2] is None else dt.datetime.fromisoformat(str(r[2])) for r in ROWS]
        table = pa.table({"size": pa.array([r[0] for r in ROWS], pa.float64()), "color": [r[1] for r in ROWS],
                          "seen": pa.array(seen, pa.timestamp("us")), "label": [r[3] for r in ROWS]})
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


ENCODINGS = {"csv": as_csv, "json": as_json, "jsonl": as_jsonl, "parquet": as_parquet}


def upload(client, content: bytes, filename: str = "table", **fields: str):
    form = {"file": (io.BytesIO(content), filename), **fields}
    return client.post("/v1/datasets", data=form, content_type="multipart/form-data")


def write(tmp_path: Path, content: bytes, name: str = "upload.part") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def same_table(a: parsing.ParsedTable, b: parsing.ParsedTable) -> None:
    assert a.columns == b.columns
    np.testing.assert_array_equal(a.values, b.values)  # (NaN equals NaN here)
    if a.datetimes is None or b.datetimes is None:
        assert a.datetimes is None and b.datetimes is None
    else:
        np.testing.assert_array_equal(a.datetimes, b.datetimes)


# ---------------------------------------------------------------- every format, one table

def test_every_format_gives_the_same_table_with_its_missing_cells(client):
    """Equal data in every format (and JSON bodies of both shapes) store the same payload bytes."""
    answers = {fmt: upload(client, encode(), f"t.{fmt}") for fmt, encode in ENCODINGS.items()}
    answers["json split"] = upload(client, as_split(), "t.json")
    answers["csv NA"] = upload(client, as_csv(missing="NA"), "t.csv")
    answers["body rows"] = client.post("/v1/datasets", json={"columns": COLUMNS, "data": ROWS})
    answers["body records"] = client.post("/v1/datasets", json={"records": as_records()})
    bodies = {}
    for name, response in answers.items():
        assert response.status_code == 201, (name, response.get_json())
        bodies[name] = response.get_json()
    reference = bodies["csv"]
    assert {c["name"]: (c["kind"], c["missing"]) for c in reference["columns"]} == {
        "size": ("numeric", 1), "color": ("string", 1), "seen": ("datetime", 1), "label": ("string", 0)}
    assert reference["n_rows"] == len(ROWS) and reference["classes"] == ["a", "b"]
    for name, body in bodies.items():
        assert body["columns"] == reference["columns"], name
        assert body["sha256"] == reference["sha256"], name  # the same values, bit for bit
    assert {name: body["source"] for name, body in bodies.items()} == {
        "csv": "csv", "json": "json", "jsonl": "jsonl", "parquet": "parquet", "json split": "json",
        "csv NA": "csv", "body rows": "json", "body records": "json"}


# Cells that JSON types and CSV does not: an integer among the strings of a string column, booleans.
TYPED_COLUMNS = ["code", "flag", "x", "label"]
TYPED_ROWS: list[list[object]] = [
    ["a", True, 1, "p"],
    [7, False, 2, "q"],
    ["b", True, 3.5, "p"],
    [7, None, 4, "q"],
    ["a", False, 5, "p"],
    [12, True, -6, "q"],
]


def test_json_cells_keep_their_types_in_bodies_as_in_files(client):
    """7 is the category "7" and true the string "true", from a body as from a file (not 7.0 and 1.0)."""
    def text(value: object) -> str:
        return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    records = [{k: v for k, v in zip(TYPED_COLUMNS, row) if v is not None} for row in TYPED_ROWS]
    files = {
        "csv": "\n".join([",".join(TYPED_COLUMNS)] + [",".join(map(text, row)) for row in TYPED_ROWS]).encode(),
        "json": json.dumps(records).encode(),
        "json split": json.dumps({"columns": TYPED_COLUMNS, "data": TYPED_ROWS}).encode(),
        "jsonl": "\n".join(json.dumps(r) for r in records).encode(),
        "parquet": as_parquet(pa.table({"code": [str(r[0]) for r in TYPED_ROWS],
                                        "flag": pa.array([r[1] for r in TYPED_ROWS], pa.bool_()),
                                        "x": pa.array([float(str(r[2])) for r in TYPED_ROWS]),
                                        "label": [r[3] for r in TYPED_ROWS]})),
    }
    answers = {name: upload(client, content, f"t.{name.split()[0]}") for name, content in files.items()}
    answers["body rows"] = client.post("/v1/datasets", json={"columns": TYPED_COLUMNS, "data": TYPED_ROWS})
    answers["body records"] = client.post("/v1/datasets", json={"records": records})
    bodies = {}
    for name, response in answers.items():
        assert response.status_code == 201, (name, response.get_json())
        bodies[name] = response.get_json()
    reference = bodies["csv"]
    code, flag, x = reference["columns"][:3]
    assert (code["kind"], code["categories"]) == ("string", ["12", "7", "a", "b"])
    assert (flag["kind"], flag["categories"], flag["missing"]) == ("string", ["false", "true"], 1)
    assert x["kind"] == "numeric"
    for name, body in bodies.items():
        assert body["columns"] == reference["columns"], name
        assert body["sha256"] == reference["sha256"], name


def test_an_integer_at_predict_finds_the_category_a_body_s_integer_made():
    table = parse_json_rows(TYPED_COLUMNS, TYPED_ROWS)
    described = describe_target(table, "label", None)
    state = fit(table, ["code", "x"], ["label"], "classification", described["classes"],
                np.arange(table.n_rows))
    preprocessor = Preprocessor(json.loads(json.dumps(state)))
    by_number = preprocessor.encode_records([{"code": 7, "x": 1}, {"code": 12.0, "x": 1}])
    by_text = preprocessor.encode_records([{"code": "7", "x": 1}, {"code": "12.0", "x": 1}])
    np.testing.assert_array_equal(by_number, by_text)
    assert by_number[0, 1:].sum() == 1  # "7" is a known category (x is column 0)
    assert by_number[1, 1:].sum() == 0  # 12.0 is the text "12.0", not the category "12"


@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_each_reader_gives_the_csv_table(tmp_path, fmt):
    reference = parse_upload(write(tmp_path, as_csv(), "t.csv"), "csv")
    same_table(parse_upload(write(tmp_path, ENCODINGS[fmt]()), fmt), reference)


# ---------------------------------------------------------------- detection

@pytest.mark.parametrize("filename, fmt", [
    ("t.csv", "csv"), ("T.JSON", "json"), ("t.jsonl", "jsonl"), ("t.ndjson", "jsonl"),
    ("t.parquet", "parquet"), ("t.pq", "parquet"), ("dir/t.pq", "parquet"), ("dir\\t.ndjson", "jsonl"),
])
def test_the_extension_tells_the_format(tmp_path, filename, fmt):
    # The content says CSV: the extension wins over it.
    assert detect_format(write(tmp_path, b"a,b\n1,2\n"), filename) == fmt


@pytest.mark.parametrize("content, fmt", [
    (as_parquet(), "parquet"),
    (as_json(), "json"),
    (b"\xef\xbb\xbf \n\t" + as_json(), "json"),
    (as_split(), "json"),  # one line, but the columns + data shape
    (json.dumps({"columns": COLUMNS, "data": ROWS}, indent=1).encode(), "json"),
    (as_jsonl(), "jsonl"),
    (as_jsonl()[:as_jsonl().index(b"\n") + 1], "jsonl"),  # a single record
    (b'{"a": 1,\n "b": 2}\n', "json"),  # an object over several lines
    (as_csv(), "csv"),
    (b"", "csv"),
])
def test_content_tells_the_format_when_the_name_does_not(tmp_path, content, fmt):
    path = write(tmp_path, content)
    assert detect_format(path, "upload.txt") == fmt
    assert detect_format(path, None) == fmt


def test_the_format_field_wins_over_name_and_content(tmp_path):
    path = write(tmp_path, as_jsonl())
    assert detect_format(path, "t.csv", "jsonl") == "jsonl"
    assert detect_format(path, "t.jsonl", " CSV ") == "csv"
    assert detect_format(path, "t.jsonl", "") == "jsonl"  # an empty field is an absent one


def test_upload_detects_by_field_extension_and_content(client):
    assert upload(client, as_jsonl(), "data.txt", format="jsonl").get_json()["source"] == "jsonl"
    assert upload(client, as_parquet(), "data.pq").get_json()["source"] == "parquet"
    assert upload(client, as_parquet(), "export").get_json()["source"] == "parquet"
    assert upload(client, as_json(), "export").get_json()["source"] == "json"
    assert upload(client, as_jsonl(), "export").get_json()["source"] == "jsonl"
    assert upload(client, as_csv(), "export").get_json()["source"] == "csv"


@pytest.mark.parametrize("given", ["xlsx", "JSON Lines", "csv,json"])
def test_an_unknown_format_field_is_422_naming_it(client, given):
    body = problem(upload(client, as_csv(), "t.csv", format=given), 422)
    assert body["errors"][0]["field"] == "format" and "jsonl" in body["errors"][0]["message"]


def test_a_wrong_format_field_is_the_reader_s_422(client):
    body = problem(upload(client, as_csv(), "t.csv", format="parquet"), 422)
    assert body["errors"][0]["field"] == "file" and "Parquet" in body["errors"][0]["message"]


# ---------------------------------------------------------------- JSON files

def test_json_records_union_of_keys_in_first_seen_order(tmp_path):
    records = [{"b": 1, "y": 0}, {"a": "x", "b": 2, "y": 1}, {"c": None, "y": 0}, {"y": 1, "a": "z", "b": 4}]
    table = parse_upload(write(tmp_path, json.dumps(records).encode()), "json")
    assert [c["name"] for c in table.columns] == ["b", "y", "a", "c"]
    assert [c["missing"] for c in table.columns] == [1, 0, 2, 4]


def test_json_is_read_in_small_steps_the_same(tmp_path, monkeypatch):
    """Records cut anywhere by the reading window (one of 7 characters) give the same table and line numbers."""
    rows = ROWS * 30
    content = json.dumps(as_records(rows), indent=1).encode()
    whole = parse_upload(write(tmp_path, content), "json")
    split_whole = parse_upload(write(tmp_path, as_split(rows), "s.json"), "json")
    monkeypatch.setattr(formats, "JSON_STEP_CHARS", 7)
    same_table(parse_upload(write(tmp_path, content), "json"), whole)
    same_table(parse_upload(write(tmp_path, as_split(rows), "s.json"), "json"), split_whole)
    bad = content.replace(b'"size": -2', b'"size": "x"', 1)  # in the 5th record
    line = content[:content.rindex(b"{", 0, content.index(b'"size": -2'))].count(b"\n") + 1
    with pytest.raises(TableError) as error:
        parse_upload(write(tmp_path, bad), "json")
    assert f"record 5 (line {line})" in str(error.value) and line > 5


@pytest.mark.parametrize("content, words", [
    (b'[{"a": 1, "y": 0}, {"a": 2, "y": 1},]', "line 1: not valid JSON"),
    (b'[{"a": 1, "y": 0}]\n[{"a": 2}]', "line 2: more after the end"),
    (b'[{"a": 1, "y": 0},\n 3]', "record 2 (line 2): expected an object"),
    (b'[{"a": 1, "y": 0},\n {"a": {"b": 1}, "y": 1}]', "record 2 (line 2), column 'a': an object is not a cell"),
    (b'{"columns": ["a", "y"]}', "no 'data'"),
    (b'{"a": {"0": 1}, "y": {"0": 2}}', "no 'columns' or 'data'"),
    (b'{"columns": "a", "data": [[1]]}', "'columns' must be an array"),
    (b'{"columns": ["a", "y"], "data": [[1, 0], 5]}', "data[1] (line 1): expected an array of cells"),
    (b'"text"', "expected a JSON array of records"),
    (b"[" * 100_000, "nested too deeply"),
    (b'[{"a": 1, "y": 0}, {"a": "\xff", "y": 1}]', "not UTF-8"),
])
def test_bad_json_files_are_422_naming_where(tmp_path, content, words):
    with pytest.raises(TableError) as error:
        parse_upload(write(tmp_path, content), "json")
    assert all(e["field"] == "file" for e in error.value.errors)
    assert words in str(error.value)


def test_a_json_record_is_at_most_max_json_mb(tmp_path):
    long = json.dumps([{"a": 1, "y": 0}, {"a": "x" * (1 << 20), "y": 1}]).encode()
    with pytest.raises(TableError, match=r"record longer than 1 MB \(MAX_JSON_MB\)"):
        parse_upload(write(tmp_path, long), "json", limits=Limits(max_json_mb=1))
    assert parse_upload(write(tmp_path, long), "json", limits=Limits(max_json_mb=2)).n_rows == 2


def test_json_records_past_max_columns_are_422(tmp_path):
    records = [{"a": 1, "y": 0}, {"b": 1, "y": 1}, {"c": 2, "y": 0}]
    with pytest.raises(TableError, match=r"record 3 \(line 1\): the records have more than 3 keys"):
        parse_upload(write(tmp_path, json.dumps(records).encode()), "json", limits=Limits(max_columns=3))


# ---------------------------------------------------------------- JSON Lines

NUMERIC_JSONL = (b'{"a": 1, "b": 2.5, "y": 0}\n\n{"b": -1e3, "a": null, "y": 1}\r\n  \n'
                 b'{"a": 3, "y": 0}\n{"a": 4, "b": 5, "y": 1}')


def row_path_only(monkeypatch):
    monkeypatch.setattr(parsing, "table_from_arrow", lambda *args, **kwargs: None)


def test_numeric_json_lines_take_pyarrow_with_the_row_path_s_table(tmp_path, monkeypatch):
    path = write(tmp_path, NUMERIC_JSONL)
    with monkeypatch.context() as patch:
        row_path_only(patch)
        reference = parse_upload(path, "jsonl")
    with monkeypatch.context() as patch:
        patch.setattr(parsing, "parse_rows", lambda *args, **kwargs: pytest.fail("the row path ran"))
        same_table(parse_upload(path, "jsonl"), reference)
    assert reference.n_rows == 4 and [c["missing"] for c in reference.columns] == [1, 1, 0]


def test_json_lines_in_many_blocks(tmp_path, monkeypatch):
    lines = b"".join(b'{"a": %d, "b": %d.5, "y": %d}\n' % (i, -i, i % 2) for i in range(3000))
    path = write(tmp_path, lines)
    monkeypatch.setattr(formats, "JSONL_BLOCK_BYTES", 1000)
    table = parse_upload(path, "jsonl")
    assert table.n_rows == 3000 and table.values[2999].tolist() == [2999, -2999.5, 1]


@pytest.mark.parametrize("content, words", [
    (b'{"a": 1, "y": 0}\n{"a": 2, "y": 1}\n{"a": 3,\n"y": 0}\n', "line 3: not a JSON object"),
    (b'{"a": 1, "y": 0}\n{"a": 2, "y": 1} {"a": 3, "y": 0}\n', "line 2: not a JSON object (Extra data"),
    (b'{"a": 1, "y": 0}\n\n[2, 1]\n', "line 3: expected an object (a record), got an array"),
    (b'{"a": 1, "y": 0}\n{"a": [1], "y": 1}\n', "line 2, column 'a': an array is not a cell"),
    (b'{"a": 1, "y": 0}\n{"a": NaN, "y": 1}\n{"a": Infinity, "y": 0}\n',
     "line 3, column 'a': 'inf' is not a finite number"),
    (b'{"a": 1, "y": 0}\n{"a": 1e999, "y": 1}\n', "line 2, column 'a': 'inf' is not a finite number"),
    (b'{"a": 1, "y": 0}\n{"a": "\xff", "y": 1}\n', "line 2: not UTF-8"),
])
def test_a_bad_json_line_is_422_naming_its_line(tmp_path, content, words):
    """Each of these starts as the fast path would take it: the row path has the last word."""
    with pytest.raises(TableError) as error:
        parse_upload(write(tmp_path, content), "jsonl")
    assert words in str(error.value), str(error.value)


def test_a_bad_json_line_through_the_api(client):
    body = problem(upload(client, b'{"a": 1, "y": 0}\n{"a": 2, "y": 1}\n{"a": 3, "y"}\n', "t.jsonl"), 422)
    assert body["errors"][0]["field"] == "file" and body["errors"][0]["message"].startswith("line 3:")


def test_json_lines_with_strings_and_new_keys_go_line_by_line(tmp_path):
    content = b'{"a": 1, "y": 0}\n{"a": 2, "b": "x", "y": 1}\n{"y": 0, "b": true}\n'
    table = parse_upload(write(tmp_path, content), "jsonl")
    assert [(c["name"], c["kind"], c["missing"]) for c in table.columns] == [
        ("a", "numeric", 1), ("y", "numeric", 0), ("b", "string", 1)]
    assert table.columns[2]["categories"] == ["true", "x"]


def test_a_json_line_is_at_most_max_json_mb(tmp_path):
    content = b'{"a": 1, "y": 0}\n{"a": "' + b"x" * (1 << 20) + b'", "y": 1}\n'
    with pytest.raises(TableError, match=r"line 2 is longer than 1 MB \(MAX_JSON_MB\)"):
        parse_upload(write(tmp_path, content), "jsonl", limits=Limits(max_json_mb=1))


# ---------------------------------------------------------------- Parquet

def test_parquet_with_nulls_strings_timestamps_and_more(tmp_path):
    table = pa.table({
        "n": pa.array([1, None, 3, 4], pa.int16()),
        "f": pa.array([0.5, 1.5, None, float(2**24 + 1)], pa.float32()),
        "s": pa.array(["u", None, "v", "u"]).dictionary_encode(),
        "t": pa.array([dt.datetime(2024, 1, 1, 12, 30, 15, 500_000, tzinfo=dt.timezone(dt.timedelta(hours=1))),
                       None, dt.datetime(2024, 2, 1, tzinfo=dt.UTC),
                       dt.datetime(2024, 3, 1, tzinfo=dt.UTC)], pa.timestamp("ns", tz="Europe/Paris")),
        "d": pa.array([dt.date(2024, 1, 1), dt.date(2024, 1, 2), None, dt.date(2024, 1, 4)]),
        "b": [True, False, None, True],
        "y": [0, 1, 0, 1],
    })
    parsed = parse_upload(write(tmp_path, as_parquet(table, row_group_size=3)), "parquet")
    kinds = {c["name"]: (c["kind"], c["missing"]) for c in parsed.columns}
    assert kinds == {"n": ("numeric", 1), "f": ("numeric", 1), "s": ("string", 1), "t": ("datetime", 1),
                     "d": ("datetime", 1), "b": ("string", 1), "y": ("numeric", 0)}
    assert parsed.columns[5]["categories"] == ["false", "true"]
    t = next(c for c in parsed.columns if c["name"] == "t")
    assert t["has_time"] and not next(c for c in parsed.columns if c["name"] == "d")["has_time"]
    # 12:30:15.5 at UTC+1 (Paris in January) is 11:30:15.5 UTC
    expected = (dt.datetime(2024, 1, 1, 11, 30, 15, 500_000) - dt.datetime(1970, 1, 1)).total_seconds()
    assert parsed.datetimes is not None and parsed.datetimes[0, t["slot"]] == expected
    assert parsed.values[3, 1] == np.float32(2**24 + 1) and np.isnan(parsed.values[2, 1])


def test_numeric_parquet_takes_pyarrow_by_row_group_with_the_row_path_s_table(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.normal(size=1000)
    table = pa.table({"a": pa.array(a, mask=a > 1.5), "i": pa.array(np.arange(1000, dtype=np.uint32)),
                      "y": pa.array(rng.integers(0, 2, 1000))})
    path = write(tmp_path, as_parquet(table, row_group_size=128))
    with monkeypatch.context() as patch:
        row_path_only(patch)
        reference = parse_upload(path, "parquet")
    with monkeypatch.context() as patch:
        patch.setattr(parsing, "parse_rows", lambda *args, **kwargs: pytest.fail("the row path ran"))
        same_table(parse_upload(path, "parquet"), reference)
    assert reference.columns[0]["missing"] == int((a > 1.5).sum()) > 0


def test_parquet_limits_come_from_the_footer(tmp_path):
    wide = write(tmp_path, as_parquet(pa.table({f"c{i}": [1, 2] for i in range(5)})))
    with pytest.raises(TableError, match="5 columns; MAX_COLUMNS is 4"):
        parse_upload(wide, "parquet", limits=Limits(max_columns=4))
    # 600,000 cells of zeros compress to almost nothing: refused before a row is read.
    tall = write(tmp_path, as_parquet(pa.table({"a": np.zeros(300_000), "y": np.zeros(300_000)})))
    assert tall.stat().st_size < 100_000
    with pytest.raises(TableError, match="more cells than 524,288"):
        parse_upload(tall, "parquet", limits=Limits(max_upload_mb=1))


@pytest.mark.parametrize("content, words", [
    (b"PAR1 and then nothing", "not a readable Parquet file"),
    (as_parquet(pa.table({"a": [[1, 2], [3]], "y": [0, 1]})), "column 'a' is of Parquet/Arrow type list"),
    (as_parquet(pa.table({"a": [b"\x00", b"\x01"], "y": [0, 1]})), "type binary"),
    (as_parquet(pa.table({"a": [1, 2], " a ": [0, 1]})), "appears twice"),
    (as_parquet(pa.table({"a": [1.0, float("inf")], "y": [0, 1]})), "'inf' is not a finite number"),
])
def test_bad_parquet_files_are_422(tmp_path, content, words):
    with pytest.raises(TableError) as error:
        parse_upload(write(tmp_path, content), "parquet")
    assert words in str(error.value)


# ---------------------------------------------------------------- NaN by format

NAN_TABLE = pa.table({"a": pa.array(np.array([1.5, np.nan, 3.0, np.nan, 5.0])),
                      "y": pa.array([0, 1, 0, 1, 0])})


def test_a_float_nan_in_parquet_is_a_missing_cell_on_both_paths(tmp_path, monkeypatch):
    """How numpy (and so many a writer) stores a missing float: read as pandas reads it, as a null."""
    nulls = NAN_TABLE.set_column(0, "a", pa.array([1.5, None, 3.0, None, 5.0], pa.float64()))
    reference = parse_upload(write(tmp_path, as_parquet(nulls), "nulls.parquet"), "parquet")
    assert reference.columns[0]["missing"] == 2
    path = write(tmp_path, as_parquet(NAN_TABLE))
    with monkeypatch.context() as patch:
        patch.setattr(parsing, "parse_rows", lambda *args, **kwargs: pytest.fail("the row path ran"))
        same_table(parse_upload(path, "parquet"), reference)
    with monkeypatch.context() as patch:
        row_path_only(patch)
        same_table(parse_upload(path, "parquet"), reference)
    # Among strings (the row path always), a float16 column too.
    mixed = NAN_TABLE.append_column("s", pa.array(["u", "v", "u", None, "v"])).set_column(
        0, "a", pa.array(np.array([1.5, np.nan, 3.0, np.nan, 5.0], dtype=np.float16)))
    parsed = parse_upload(write(tmp_path, as_parquet(mixed), "mixed.parquet"), "parquet")
    assert [c["missing"] for c in parsed.columns] == [2, 0, 1]
    np.testing.assert_array_equal(parsed.values[:, 0], reference.values[:, 0])


@pytest.mark.parametrize("values", [[1.0, np.nan, -np.inf], [np.nan, np.inf]])
def test_infinity_in_parquet_stays_a_422_among_nans(tmp_path, values):
    table = pa.table({"a": pa.array(np.array(values)), "y": pa.array(range(len(values)))})
    with pytest.raises(TableError, match="'-?inf' is not a finite number"):
        parse_upload(write(tmp_path, as_parquet(table)), "parquet")


@pytest.mark.parametrize("fmt, content", [
    ("jsonl", b'{"a": 1.5, "y": 0}\n{"a": NaN, "y": 1}\n{"a": 3, "y": 0}\n'),
    ("json", b'[{"a": 1.5, "y": 0}, {"a": NaN, "y": 1}, {"a": 3, "y": 0}]'),
    ("json", b'{"columns": ["a", "y"], "data": [[1.5, 0], [NaN, 1], [3, 0]]}'),
])
def test_a_json_nan_token_is_a_missing_cell(tmp_path, fmt, content):
    table = parse_upload(write(tmp_path, content), fmt)
    assert table.columns[0]["missing"] == 1 and np.isnan(table.values[1, 0])


def test_a_nan_in_a_json_body_is_a_missing_cell_and_infinity_a_422(client):
    answer = client.post("/v1/datasets", data='{"columns": ["a", "y"], "data": [[1.5, 0], [NaN, 1], [3, 0]]}',
                         content_type="application/json")
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["columns"][0]["missing"] == 1
    body = problem(client.post("/v1/datasets", data='{"records": [{"a": 1, "y": 0}, {"a": Infinity, "y": 1}, '
                                                     '{"a": 3, "y": 0}]}', content_type="application/json"), 422)
    assert body["errors"][0]["field"] == "records[1].a" and "'inf' is not a finite number" in str(body)


def test_nan_in_csv_is_missing_as_a_default_token_and_else_a_422(tmp_path):
    content = b"a,y\n1.5,0\nnan,1\nNaN,0\n4,1\n"
    assert parse_upload(write(tmp_path, content, "t.csv"), "csv").columns[0]["missing"] == 2
    with pytest.raises(TableError, match="'nan' is not a finite number"):
        parse_upload(write(tmp_path, content, "t.csv"), "csv", na_values=["?"])


# ---------------------------------------------------------------- na_values and records bodies

@pytest.mark.parametrize("text, tokens", [
    ("", frozenset()), ("?, -", frozenset({"?", "-"})), ('["a,b", " x "]', frozenset({"a,b", "x"})),
])
def test_na_values_field_syntax(text, tokens):
    assert formats.parse_na_values(text) == tokens


def test_na_values_replace_the_csv_tokens(client):
    content = b"a,b,y\n1,?,0\n2,NA,1\n,x,0\n4,NA,1\n"
    default = upload(client, content, "t.csv").get_json()
    assert [c["missing"] for c in default["columns"]] == [1, 2, 0]
    given = upload(client, content, "t.csv", na_values="?").get_json()
    assert [c["missing"] for c in given["columns"]] == [1, 1, 0]  # NA is a category now; empty stays missing
    assert "NA" in given["columns"][1]["categories"]
    listed = upload(client, content, "t.csv", na_values='["?", "NA"]').get_json()
    assert [c["missing"] for c in listed["columns"]] == [1, 3, 0]


def test_an_upload_s_na_values_are_stored_with_it_and_default_ones_not(tmp_path):
    content = b"a,s,y\n1,NA,0\n2,?,1\n3,x,0\n"
    given = parse_upload(write(tmp_path, content, "t.csv"), "csv", na_values=[" ? ", ""])
    assert given.na_values == ["?"]
    assert parsing.ParsedTable.from_npz(given.to_npz()).na_values == ["?"]
    default = parse_upload(write(tmp_path, content, "t.csv"), "csv")
    assert default.na_values is None and "na_values" not in np.load(io.BytesIO(default.to_npz())).files


def test_predict_reads_a_csv_body_with_the_upload_s_na_values(client, app):
    """Uploaded with na_values="?", "NA" is a category: a CSV body to /predict reads it so, and "?" as missing."""
    lines = ["x,s,y"] + [f"{i % 5},{['NA', 'b', '?', 'c'][i % 4]},{i % 2}" for i in range(40)]
    dataset = upload(client, ("\n".join(lines) + "\n").encode(), "t.csv", na_values="?").get_json()
    assert dataset["columns"][1]["categories"] == ["NA", "b", "c"] and dataset["columns"][1]["missing"] == 10
    model_id = train(client, app, dataset["id"], mlp(activation="tanh"), epochs=2, seed=0)
    model = client.get(f"/v1/models/{model_id}").get_json()
    assert model["preprocessing"]["na_values"] == ["?"]
    url = f"/v1/models/{model_id}/predict"
    by_json = client.post(url, json={"records": [{"x": 1, "s": "NA"}, {"x": 2, "s": None}, {"x": 3, "s": "b"}]})
    assert by_json.status_code == 200, by_json.get_json()
    by_csv = client.post(url, data="x,s\n1,NA\n2,?\n3,b\n", content_type="text/csv")
    assert by_csv.status_code == 200, by_csv.get_json()
    assert by_csv.get_json()["probabilities"] == by_json.get_json()["probabilities"]
    # A numeric-only body takes pyarrow's reader: "?" is its null too.
    state = model["preprocessing"]
    numeric = Preprocessor({**state, "features": state["features"][:1]})
    np.testing.assert_array_equal(numeric.encode_csv(b"x\n?\n2\n", 10), numeric.encode_records([{}, {"x": 2}]))


def test_a_state_without_na_values_reads_csv_with_the_default_tokens():
    table = parse_json_rows(["s", "y"], [["NA", 0], ["b", 1], [None, 0], ["NA", 1]])
    state = fit(table, ["s"], ["y"], "classification", [0, 1], np.arange(4))
    assert "na_values" not in state
    preprocessor = Preprocessor(state)
    np.testing.assert_array_equal(preprocessor.encode_csv(b"s\nNA\n?\n", 10),
                                  preprocessor.encode_records([{"s": None}, {"s": "?"}]))
    with_tokens = Preprocessor({**state, "na_values": ["?"]})
    np.testing.assert_array_equal(with_tokens.encode_csv(b"s\nNA\n?\n", 10),
                                  with_tokens.encode_records([{"s": "NA"}, {"s": None}]))


@pytest.mark.parametrize("fields", [{"na_values": "?", "format": "jsonl"}, {"na_values": "[1, 2]"},
                                    {"na_values": "[unclosed"}])
def test_bad_na_values_are_422_naming_the_field(client, fields):
    body = problem(upload(client, as_jsonl(), "t.jsonl", **fields), 422)
    assert body["errors"][0]["field"] == "na_values"


def test_records_body_keys_union_and_errors_name_the_key(client):
    answer = client.post("/v1/datasets", json={"records": [{"a": 1, "y": "p"}, {"b": "x", "y": "q"},
                                                           {"a": 3, "b": None, "y": "p"}], "target": "y"})
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert [(c["name"], c["missing"]) for c in body["columns"]] == [("a", 1), ("y", 0), ("b", 2)]
    assert body["targets"] == ["y"] and body["classes"] == ["p", "q"]
    bad = problem(client.post("/v1/datasets", json={"records": [{"a": 1, "y": 0}, {"a": 2, "y": 1},
                                                                {"a": "x", "y": 0}, {"a": 3, "y": 1}]}), 422)
    assert bad["errors"][0]["field"] == "records[2].a"


@pytest.mark.parametrize("payload, field", [
    ({"records": [{"a": 1, "y": 0}], "columns": ["a", "y"]}, ""),
    ({"columns": ["a", "y"]}, ""),
    ({"records": []}, "records"),
    ({"records": [{"a": [1]}]}, "records[0].a"),
    ({"records": [[1, 2]]}, "records[0]"),
])
def test_records_body_schema_errors(client, payload, field):
    body = problem(client.post("/v1/datasets", json=payload), 422)
    assert field in [e["field"] for e in body["errors"]], body


def test_records_body_rows_are_counted_before_validation(client, monkeypatch):
    monkeypatch.setattr("service.api.datasets.MAX_PREDICT_ROWS", 2)
    body = problem(client.post("/v1/datasets", json={"records": [{"a": 1, "y": 0}] * 3}), 422)
    assert body["errors"][0]["field"] == "records"
