"""The pyarrow fast path of CSV parsing gives the csv-module path's table, or hands over to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.data import parsing
from service.core.data.parsing import TableError, parse_csv, parse_rows


def slow_parse(path: Path) -> parsing.ParsedTable:
    """Parse with the csv-module path only (the reference)."""
    header, rows = parsing._csv_rows(path, "file")
    return parse_rows(header, rows, field="file", row_field=None, na_values=parsing.NA_VALUES)


@pytest.fixture
def fast_only(monkeypatch):
    """Fail any test whose file does not take the fast path."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the csv-module path ran")

    monkeypatch.setattr(parsing, "parse_rows", refuse)


NUMERIC_FILES = {
    "plain": "a,b,c\n1,2.5,-3\n4,5e3,0.1\n",
    "bom_crlf_blank_tail": "\ufeffa,b\r\n1,2\r\n3,4\r\n\r\n\r\n",
    "spaced_and_quoted_header": ' a ,"b"\n1, 2\n+3 ,.5\n',
    "blank_lines_inside": "a,b\n\n1,2\n\n3,4\n",
    "big_integers": "a,b\n9007199254740993,1\n-123456789012345678,2\n",
    "float32_rounding": "a,b\n0.1,16777217\n3.4028234e38,1e-45\n",
    # Missing cells: empty, NA tokens as they are written (pyarrow matches them unstripped).
    "empty_cells": "a,b\n1,\n,3\n4,5\n",
    "na_tokens": "a,b,c\n1,NA,N/A\nnan,2,NULL\n3,#N/A,4\n<NA>,None,5\n",
    "a_column_all_missing": "a,b\n1,\n2,NA\n",
}


@pytest.mark.parametrize("name", sorted(NUMERIC_FILES))
def test_numeric_files_take_the_fast_path_with_the_same_table(tmp_path, name, monkeypatch):
    path = tmp_path / f"{name}.csv"
    path.write_bytes(NUMERIC_FILES[name].encode())
    expected = slow_parse(path)
    monkeypatch.setattr(parsing, "parse_rows", lambda *a, **k: pytest.fail("the csv-module path ran"))
    table = parse_csv(path)
    assert table.columns == expected.columns
    assert table.values.dtype == np.float32
    assert table.to_npz() == expected.to_npz()


@pytest.mark.parametrize("text", [
    "a,b\n1,cat\n2,dog\n",            # a string column
    "a,b\n1,inf\n2,3\n",              # not finite
    "a,b\n1, NA\n2,3\n",              # a padded NA token (the csv-module path strips it)
    "a,b\n1,1e39\n2,3\n",             # beyond float32
    "a,b\n1,2\n3\n",                  # ragged
    "a,a\n1,2\n",                     # duplicate header
    "a,b\n",                          # header only
    "a,b\n1,true\n2,false\n",         # booleans
    "a,b\n1,2020-01-01\n2,2020-01-02\n",  # dates
    'a,b\n"1",2\n3,4\n',                # quotes in the data (a quoted newline could span blocks)
    "a,b\n1,2\n   \n3,4\n",            # a line of spaces is a row with a missing value
    "a,b\r1,2\r3,4\r",                 # old Mac line ends
])
def test_other_files_go_through_the_csv_module_path(tmp_path, text, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_text(text)
    calls = []
    original = parsing.parse_rows
    monkeypatch.setattr(parsing, "parse_rows", lambda *a, **k: calls.append(1) or original(*a, **k))
    try:
        table = parse_csv(path)
    except TableError as error:
        assert calls and error.errors
        return
    assert calls
    expected = slow_parse(path)
    assert table.columns == expected.columns and table.to_npz() == expected.to_npz()


def test_a_large_numeric_file_matches_the_reference(tmp_path, fast_only, monkeypatch):
    monkeypatch.setattr(parsing, "CSV_BLOCK_BYTES", 4096)  # many blocks, lines cut at block ends
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5000, 6)) * 1000
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write("x0,x1,x2,x3,x4,y\n")
        np.savetxt(handle, values, fmt="%.7g", delimiter=",")
        handle.write("\n\n")
    table = parse_csv(path)
    reference = np.array([[float(cell) for cell in line.split(",")]
                          for line in path.read_text().splitlines()[1:] if line], dtype=np.float32)
    assert np.array_equal(table.values, reference)


def test_pyarrow_columns_are_read_from_their_buffers_at_their_offsets():
    import pyarrow as pa

    ints = pa.array([1, -2, 2**53 + 1, 7], type=pa.int64())
    doubles = pa.array([0.1, 2.5, -1e300, 3.0], type=pa.float64())
    assert parsing._chunk_as_float64(ints).tolist() == [1.0, -2.0, float(2**53 + 1), 7.0]
    assert parsing._chunk_as_float64(ints.slice(2, 2)).tolist() == [float(2**53 + 1), 7.0]
    assert parsing._chunk_as_float64(doubles.slice(3, 1)).tolist() == [3.0]
    assert parsing._chunk_as_float64(doubles.slice(1, 2)) is None  # -1e300 is beyond float32
    assert parsing._chunk_as_float64(doubles.slice(4)).tolist() == []
    with_nulls = parsing._chunk_as_float64(pa.array([1.0, None, 3.0, None]).slice(1))
    assert np.isnan(with_nulls[[0, 2]]).all() and with_nulls[1] == 3.0
    assert np.isnan(parsing._chunk_as_float64(pa.array([None, None]))).all()  # the null type
    assert parsing._chunk_as_float64(pa.array(["a"])) is None
