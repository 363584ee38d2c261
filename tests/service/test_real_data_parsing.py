"""Tables as they ship: missing cells, NA tokens, dates, column roles, folded categories."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

from service.core.data import parsing
from service.core.data.parsing import (
    NA_VALUES,
    OTHER_CATEGORY,
    ParsedTable,
    TableError,
    describe_target,
    parse_csv,
    parse_datetime,
    parse_json_rows,
    table_from_arrow,
)


def csv(tmp_path: Path, text: str, **options) -> ParsedTable:
    path = tmp_path / "table.csv"
    path.write_text(text)
    return parse_csv(path, **options)


def column(table: ParsedTable, name: str) -> dict:
    (found,) = [c for c in table.columns if c["name"] == name]
    return found


def cells(table: ParsedTable, name: str) -> list[float]:
    return table.values[:, [c["name"] for c in table.columns].index(name)].tolist()


# -- missing cells --------------------------------------------------------------------------------

@pytest.mark.parametrize("token", sorted(NA_VALUES))
@pytest.mark.parametrize("path", ["pyarrow", "csv module"])
def test_every_default_na_token_is_a_missing_cell(tmp_path, token, path, monkeypatch):
    # A string column sends the table through the csv-module path; without it pyarrow reads it.
    extra, cell = (",s", ",x") if path == "csv module" else ("", "")
    if path == "pyarrow":
        monkeypatch.setattr(parsing, "parse_rows", lambda *a, **k: pytest.fail("the csv-module path ran"))
    table = csv(tmp_path, f"a,b{extra}\n1,{token}{cell}\n2,3{cell}\n4,5{cell}\n")
    assert column(table, "b") == {"name": "b", "kind": "numeric", "role": "feature", "missing": 1, "distinct": 2}
    assert math.isnan(cells(table, "b")[0]) and cells(table, "b")[1:] == [3.0, 5.0]


def test_na_tokens_are_matched_stripped_and_exactly(tmp_path):
    table = csv(tmp_path, "a,b\n1, NA \n2,na\n3,x\n")
    # " NA " is missing; "na" is not a token (pandas has none either): a value.
    assert column(table, "b")["kind"] == "string" and column(table, "b")["missing"] == 1
    assert column(table, "b")["categories"] == ["na", "x"]


def test_na_values_replace_the_default_tokens(tmp_path):
    table = csv(tmp_path, "a,b\n1,?\n2,NA\n3,\n", na_values=["?"])
    b = column(table, "b")
    assert b["kind"] == "string" and b["categories"] == ["NA"] and b["missing"] == 2  # "?" and the empty cell


def test_a_string_column_keeps_its_missing_cells_out_of_its_categories(tmp_path):
    table = csv(tmp_path, "s,y\nred,1\nNA,2\n,3\nblue,4\n")
    s = column(table, "s")
    assert s["categories"] == ["blue", "red"] and s["missing"] == 2 and s["distinct"] == 2
    assert cells(table, "s")[0] == 1.0 and math.isnan(cells(table, "s")[1]) and math.isnan(cells(table, "s")[2])


def test_json_null_and_empty_strings_are_missing_but_na_words_are_values():
    table = parse_json_rows(["a", "s", "y"], [[1, None, 0], [None, "", 1], [3, "NA", 0], [4, "x", 1]])
    assert column(table, "a")["missing"] == 1
    assert column(table, "s")["missing"] == 2 and column(table, "s")["categories"] == ["NA", "x"]


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e999"])
def test_infinity_stays_a_422_naming_the_cell(tmp_path, cell):
    with pytest.raises(TableError) as caught:
        csv(tmp_path, f"a,b\n1,2\n3,{cell}\n4,NA\n")
    (error,) = caught.value.errors
    assert error["row"] == 2 and error["column"] == "b" and "finite" in error["message"]


def test_a_column_kind_comes_from_its_present_cells(tmp_path):
    table = csv(tmp_path, "a,b,c\nNA,x,\nNA,y,\n1,NA,\n")
    assert [c["kind"] for c in table.columns] == ["numeric", "string", "numeric"]
    assert column(table, "c")["role"] == "constant" and column(table, "c")["distinct"] == 0


# -- dates ------------------------------------------------------------------------------------------

def test_parse_datetime_reads_iso_dates_and_date_times():
    assert parse_datetime("1970-01-02") == (86_400.0, False)
    assert parse_datetime("1970-01-01T01:30") == (5_400.0, True)
    assert parse_datetime("1970-01-01 01:30:00.5") == (5_400.5, True)
    assert parse_datetime("1970-01-01T01:00:00+01:00") == (0.0, True)  # converted to UTC
    assert parse_datetime("1970-01-01T00:00:00Z") == (0.0, True)
    for text in ("20200102", "2020-13-01", "2020-02-30", "01/02/2020", "2020-01", "yesterday", ""):
        assert parse_datetime(text) is None, text


def test_a_column_of_iso_dates_is_a_datetime_column_with_exact_seconds(tmp_path):
    table = csv(tmp_path, "when,at,y\n2020-01-31,2020-01-31T08:30:00,1\nNA,2021-06-01 23:59,2\n"
                          "1999-12-31,,3\n")
    when, at = column(table, "when"), column(table, "at")
    assert (when["kind"], when["has_time"], when["missing"], when["slot"]) == ("datetime", False, 1, 0)
    assert (at["kind"], at["has_time"], at["missing"], at["slot"]) == ("datetime", True, 1, 1)
    assert table.datetimes is not None and table.datetimes.dtype == np.float64
    assert table.datetimes[0, 0] == parse_datetime("2020-01-31")[0]
    assert table.datetimes[1, 1] == parse_datetime("2021-06-01 23:59")[0]
    assert np.isnan(table.datetimes[1, 0]) and np.isnan(table.datetimes[2, 1])
    assert np.isnan(table.values[1, 0]) and table.values[0, 0] == np.float32(18292.0)  # days since 1970


def test_a_column_that_is_only_mostly_dates_is_a_string_column(tmp_path):
    table = csv(tmp_path, "when,y\n2020-01-31,1\nlast week,2\n2020-02-01,3\n")
    assert column(table, "when")["kind"] == "string" and table.datetimes is None
    assert column(table, "when")["categories"] == ["2020-01-31", "2020-02-01", "last week"]


def test_datetimes_survive_the_payload_and_old_payloads_still_load(tmp_path):
    table = csv(tmp_path, "when,y\n2020-01-31,1\n2020-02-01,2\n")
    again = ParsedTable.from_npz(table.to_npz())
    assert again.columns == table.columns and np.array_equal(again.datetimes, table.datetimes)
    old = io.BytesIO()
    np.savez(old, values=np.zeros((2, 1), dtype=np.float32), columns=np.array('[{"name": "a", "kind": "numeric"}]'))
    assert ParsedTable.from_npz(old.getvalue()).datetimes is None


# -- roles and categories -------------------------------------------------------------------------

def test_identifier_is_a_string_column_with_more_than_max_50_or_half_the_rows_distinct(tmp_path):
    rows = "\n".join(f"id{i},code{i % 61},{i % 2}" for i in range(120))
    table = csv(tmp_path, "name,code,y\n" + rows + "\n")
    assert column(table, "name")["role"] == "identifier"  # 120 > max(50, 60)
    assert column(table, "code")["role"] == "identifier"  # 61 > 60
    rows = "\n".join(f"id{i},code{i % 60},{i % 2}" for i in range(120))
    assert column(csv(tmp_path, "name,code,y\n" + rows + "\n"), "code")["role"] == "feature"  # 60, not more
    small = "\n".join(f"id{i},{i % 2}" for i in range(40))
    assert column(csv(tmp_path, "name,y\n" + small + "\n"), "name")["role"] == "feature"  # 40 <= 50


def test_a_numeric_column_is_never_an_identifier_and_one_value_is_constant(tmp_path):
    rows = "\n".join(f"{i},7,same,{i % 2}" for i in range(120))
    table = csv(tmp_path, "n,seven,s,y\n" + rows + "\n")
    assert [c["role"] for c in table.columns] == ["feature", "constant", "constant", "feature"]
    assert column(table, "n")["distinct"] == 120


def test_categories_beyond_max_categories_fold_the_rarest_into_other(tmp_path):
    # a x4, b x3, c x2, d x1, e x1: keep the 3 most frequent; ties broken by value.
    values = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d", "e"]
    table = csv(tmp_path, "s,y\n" + "\n".join(f"{v},{i % 2}" for i, v in enumerate(values)) + "\n",
                max_categories=3)
    s = column(table, "s")
    assert s["categories"] == ["a", "b", "c", OTHER_CATEGORY] and s["folded"] == 2 and s["distinct"] == 5
    decoded = [s["categories"][int(code)] for code in cells(table, "s")]
    assert decoded == ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + [OTHER_CATEGORY] * 2


def test_describe_target_counts_rows_without_target_and_warns(tmp_path):
    rows = "\n".join(f"id{i},1,{i % 3},{'' if i % 10 == 0 else i % 2}" for i in range(100))
    table = csv(tmp_path, "name,one,k,label\n" + rows + "\n")
    described = describe_target(table, None, None)
    assert described["features"] == ["k"] and described["classes"] == [0, 1]
    assert described["task"] == "classification" and described["n_rows_without_target"] == 10
    assert [c["role"] for c in described["columns"]] == ["identifier", "constant", "feature", "target"]
    warnings = " | ".join(described["warnings"])
    assert "'name' has 100 distinct values in 100 rows: an identifier" in warnings
    assert "'one' has a single value: constant" in warnings and "10 of 100 rows have no target" in warnings


def test_a_string_target_with_more_labels_than_max_categories_is_a_422(tmp_path):
    table = csv(tmp_path, "x,label\n" + "\n".join(f"{i},l{i % 5}" for i in range(20)) + "\n", max_categories=3)
    with pytest.raises(TableError) as caught:
        describe_target(table, None, None)
    assert caught.value.errors[0]["field"] == "target" and "MAX_CATEGORIES" in caught.value.errors[0]["message"]


def test_a_target_without_any_value_is_a_422(tmp_path):
    with pytest.raises(TableError) as caught:
        describe_target(csv(tmp_path, "a,y\n1,NA\n2,\n"), None, None)
    assert caught.value.errors[0]["field"] == "target"


# -- the pyarrow path for every format ------------------------------------------------------------

def test_table_from_arrow_takes_nulls_any_numeric_type_and_columns_in_any_order():
    import pyarrow as pa

    first = pa.table({"b": pa.array([1, None], pa.int32()), "a": pa.array([0.5, 1.5], pa.float32())})
    second = pa.record_batch([pa.array([2.5]), pa.array([None], pa.null())], names=["a", "b"])
    table = table_from_arrow(["a", "b"], [first, second])
    assert table is not None
    assert np.array_equal(table.values, np.array([[0.5, 1], [1.5, np.nan], [2.5, np.nan]], np.float32),
                          equal_nan=True)
    assert column(table, "b")["missing"] == 2 and column(table, "a")["distinct"] == 3


def test_table_from_arrow_hands_strings_non_finite_numbers_and_a_missing_column_to_the_row_path():
    import pyarrow as pa

    assert table_from_arrow(["a"], [pa.table({"a": ["x"]})]) is None
    assert table_from_arrow(["a"], [pa.table({"a": [math.inf]})]) is None
    assert table_from_arrow(["a", "b"], [pa.table({"a": [1.0], "c": [2.0]})]) is None
    assert table_from_arrow(["a"], [None]) is None
    assert table_from_arrow(["a"], []) is None


def test_the_fast_and_row_paths_agree_on_missing_cells(tmp_path):
    text = "a,b,c\n1,NA,\nnan,2,3\n4,5,NULL\n"
    header, rows = parsing._csv_rows(_write(tmp_path, text), "file")
    reference = parsing.parse_rows(header, rows, field="file", row_field=None, na_values=NA_VALUES)
    table = csv(tmp_path, text)
    assert table.columns == reference.columns and table.to_npz() == reference.to_npz()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "reference.csv"
    path.write_text(text)
    return path
