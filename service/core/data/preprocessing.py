"""Preprocessing that is part of a model: fitted on the training split, applied by /predict.

Numeric features are imputed with the training split's mean and standardized with
its mean and deviation (missing cells left out of both), plus a 0/1 missing
indicator when the training split had missing cells; datetime features become
numeric parts (year, month, day, weekday, day of year; hour and minute when the
column has times) treated the same way. String features are one-hot encoded with
the categories seen in training, plus a slot of their own for a missing value when
training had one (a value never seen in training, or a missing value without that
slot, encodes as all zeros; in a column whose upload folded its rarest values into
`other`, an unseen value encodes as `other`). Regression targets are standardized and mapped back at
prediction. The fitted state is a JSON-able dict stored with the model.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from service.core.data import parsing
from service.core.data.parsing import (
    DEFAULT_MAX_COLUMNS,
    FLOAT32_MAX,
    MAX_ERRORS,
    ParsedTable,
    header_wider_than,
    parse_number,
)
from service.core.problems import FieldError, FieldErrors


def _csv_text(body: bytes) -> str:
    """Decode a CSV body (UTF-8, a BOM dropped, any line ends) or raise InputError."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError([{"field": "csv", "message": f"the body is not UTF-8 text ({exc.reason} at "
                                                      f"byte {exc.start})"}]) from None
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\n")


class InputError(FieldErrors):
    """Rows given to /predict do not fit the model; `errors` names row and field."""


def _deviation(values: np.ndarray) -> float:
    std = float(values.std()) if len(values) else 0.0
    # A constant column would divide by zero; leave it centred instead.
    return std if std > 1e-12 and math.isfinite(std) else 1.0


def _moments(values: np.ndarray) -> tuple[float, float, bool]:
    """Return the mean and deviation of the non-missing values, and whether any value was missing."""
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    kept = values[present]
    return (float(kept.mean()) if len(kept) else 0.0), _deviation(kept), bool(not present.all())


DATE_PARTS = ("year", "month", "day", "weekday", "yearday")
TIME_PARTS = ("hour", "minute")


def datetime_parts(seconds: np.ndarray, has_time: bool) -> np.ndarray:
    """Return the numeric parts of datetimes given as float64 seconds since 1970-01-01.

    Columns: year, month (1-12), day (1-31), weekday (Monday 0 to Sunday 6), day of
    the year (1-366), then hour and minute when `has_time`. A NaN (missing) second
    gives a row of NaN.
    """
    seconds = np.asarray(seconds, dtype=np.float64).reshape(-1)
    missing = np.isnan(seconds)
    whole = np.floor(np.where(missing, 0.0, seconds)).astype(np.int64).astype("datetime64[s]")
    days = whole.astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    years = days.astype("datetime64[Y]")
    day_number = days.astype(np.int64)
    columns = [years.astype(np.int64) + 1970,
               (months - years.astype("datetime64[M]")).astype(np.int64) + 1,
               (days - months.astype("datetime64[D]")).astype(np.int64) + 1,
               (day_number + 3) % 7,  # 1970-01-01 was a Thursday (3 when Monday is 0)
               (days - years.astype("datetime64[D]")).astype(np.int64) + 1]
    if has_time:
        in_day = (whole - days.astype("datetime64[s]")).astype(np.int64)
        columns += [in_day // 3600, in_day // 60 % 60]
    parts = np.stack(columns, axis=1).astype(np.float64)
    parts[missing] = np.nan
    return parts


def _part_names(has_time: bool) -> list[str]:
    return list(DATE_PARTS + (TIME_PARTS if has_time else ()))


def fit(table: ParsedTable, features: list[str], targets: list[str], task: str,
        classes: list[Any] | None, train_rows: np.ndarray) -> dict[str, Any]:
    """Fit the preprocessing on the training rows of a stored table.

    Missing cells (NaN) are left out of every mean, deviation and category list; a
    feature with missing training cells gets an indicator input (numeric, datetime)
    or a missing slot of its own (string). docs/service.md, "Preprocessing", gives
    the state's format.
    """
    names = [c["name"] for c in table.columns]
    position = {name: j for j, name in enumerate(names)}
    train = table.values[train_rows]
    fitted_features: list[dict[str, Any]] = []
    for name in features:
        j = position[name]
        column = table.columns[j]
        if column["kind"] == "numeric":
            mean, std, missing = _moments(train[:, j])
            fitted_features.append({"name": name, "kind": "numeric", "mean": mean, "std": std,
                                    "indicator": missing})
        elif column["kind"] == "datetime":
            datetimes = table.datetimes
            assert datetimes is not None, f"datetime column {name!r} without the table's datetimes"
            has_time = bool(column.get("has_time", False))
            seconds = datetimes[train_rows, column["slot"]]
            parts = datetime_parts(seconds, has_time)
            moments = [_moments(parts[:, p]) for p in range(parts.shape[1])]
            fitted_features.append({"name": name, "kind": "datetime", "has_time": has_time,
                                    "parts": _part_names(has_time),
                                    "mean": [m[0] for m in moments], "std": [m[1] for m in moments],
                                    "indicator": bool(np.isnan(seconds).any())})
        else:
            codes = train[:, j]
            present = ~np.isnan(codes)
            seen = np.unique(codes[present].astype(np.int64))
            categories = [column["categories"][k] for k in seen]
            # The upload folded this column's rarest values into OTHER_CATEGORY: a value it does
            # not know at prediction is such a rare one, and encodes as that category.
            fold = bool(column.get("folded")) and parsing.OTHER_CATEGORY in categories
            fitted_features.append({"name": name, "kind": "string", "categories": categories,
                                    "missing_category": bool(not present.all()), "fold": fold})
    if task == "classification":
        target: dict[str, Any] = {"task": task, "names": targets, "classes": classes}
    else:
        moments = [_moments(train[:, position[t]]) for t in targets]
        target = {"task": task, "names": targets,
                  "mean": [m[0] for m in moments], "std": [m[1] for m in moments]}
    # The dataset's column names: /predict accepts (and ignores) those the model does not use.
    state: dict[str, Any] = {"features": fitted_features, "target": target, "columns": names}
    if table.na_values is not None:
        # The upload's own CSV NA tokens: /predict reads a CSV body with them (absent: NA_VALUES).
        state["na_values"] = list(table.na_values)
    return state


def encoded_width(columns: list[dict[str, Any]], features: list[str]) -> int:
    """Return the width a fit on these dataset columns gives at most (the network's input_dim).

    An indicator or missing slot counts when the column has missing cells anywhere; a
    fit counts it only when its training split has one, and categories only when
    training rows hold them, so the fitted width may be smaller.
    """
    by_name = {c["name"]: c for c in columns}
    width = 0
    for name in features:
        column = by_name[name]
        missing = column.get("missing", 0) > 0
        if column["kind"] == "numeric":
            width += 1 + missing
        elif column["kind"] == "datetime":
            width += len(_part_names(bool(column.get("has_time", False)))) + missing
        else:
            width += len(column["categories"]) + missing
    return width


class Preprocessor:
    """Fitted preprocessing compiled for fast encoding of stored tables and raw rows.

    Raw rows become a (n, features) matrix first: a numeric feature's value, a string
    feature's index in the fitted categories (-1 unseen), NaN for a missing cell; a
    datetime feature's seconds travel beside it in float64 (float32 would lose minutes).
    The encoded layout: the scaled block (each numeric feature, each datetime feature's
    parts, in feature order), then one missing indicator per feature that has one, then
    one one-hot block per string feature (its categories, then its missing slot if any).
    A state without indicators, datetimes and missing slots (every model stored before
    missing values were accepted) has the old layout: numeric features, then one-hot blocks.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.features: list[dict[str, Any]] = state["features"]
        self.feature_names = [f["name"] for f in self.features]
        self.target: dict[str, Any] = state["target"]
        self.task: str = self.target["task"]
        self.classes: list[Any] | None = self.target.get("classes")
        # Old states have no column list: only the model's features and targets are known then.
        self.known_columns = (set(state.get("columns", [])) | set(self.feature_names)
                              | set(self.target["names"]))
        # The tokens a CSV body's cell is missing for: the upload's (na_values), else pandas' defaults.
        self.na_values = parsing.na_tokens(state.get("na_values"))
        self._numeric = [k for k, f in enumerate(self.features) if f["kind"] == "numeric"]
        self._datetime = [k for k, f in enumerate(self.features) if f["kind"] == "datetime"]
        self.all_numeric = len(self._numeric) == len(self.features)
        mean: list[float] = []
        std: list[float] = []
        self._numeric_at: list[int] = []  # scaled-block column of each numeric feature
        self._datetime_at: list[tuple[int, int, bool]] = []  # (datetime slot, first column, has_time)
        first_column: dict[int, int] = {}
        for k, f in enumerate(self.features):
            first_column[k] = len(mean)
            if f["kind"] == "numeric":
                self._numeric_at.append(len(mean))
                mean.append(f["mean"])
                std.append(f["std"])
            elif f["kind"] == "datetime":
                self._datetime_at.append((len(self._datetime_at), len(mean), bool(f["has_time"])))
                mean += f["mean"]
                std += f["std"]
        self._scaled_width = len(mean)
        self._mean = np.array(mean, dtype=np.float32)
        self._std = np.array(std, dtype=np.float32)
        # (encoded column, scaled column whose NaN it reports)
        self._indicators = [(self._scaled_width + i, first_column[k]) for i, k in enumerate(
            k for k, f in enumerate(self.features) if f["kind"] != "string" and f.get("indicator"))]
        # The all-numeric fast path: no datetime, no string, no indicator.
        self._plain = self.all_numeric and not self._indicators
        self._category_index = {k: {c: i for i, c in enumerate(f["categories"])}
                                for k, f in enumerate(self.features) if f["kind"] == "string"}
        # Where a value the fit did not see goes: nowhere (-1, all zeros), or `other` when folded.
        self._unknown = {k: (self._category_index[k][parsing.OTHER_CATEGORY] if f.get("fold") else -1)
                         for k, f in enumerate(self.features) if f["kind"] == "string"}
        self._blocks: list[tuple[int, int, int, bool]] = []  # (feature, offset, categories, missing slot)
        offset = self._scaled_width + len(self._indicators)
        for k, f in enumerate(self.features):
            if f["kind"] == "string":
                slot = bool(f.get("missing_category", False))
                self._blocks.append((k, offset, len(f["categories"]), slot))
                offset += len(f["categories"]) + slot
        self.input_width = offset
        if self.task == "regression":
            self._target_mean = np.array(self.target["mean"], dtype=np.float64)
            self._target_std = np.array(self.target["std"], dtype=np.float64)

    # Encoding -------------------------------------------------------------

    def _encode(self, matrix: np.ndarray, seconds: np.ndarray | None = None, clean: bool = False) -> np.ndarray:
        """Encode a raw (n, features) matrix (see the class), `seconds` (n, datetime features) beside it.

        `clean` says the caller knows the matrix has no NaN (a checked all-numeric
        request): an all-numeric model without indicators then only standardizes.
        """
        n = matrix.shape[0]
        if self._plain:
            scaled = ((matrix - self._mean) / self._std).astype(np.float32, copy=False)
            if not clean:
                # Mean imputation, then standardization with the same mean: a missing value is 0.
                scaled[np.isnan(scaled)] = 0.0
            return scaled
        encoded = np.zeros((n, self.input_width), dtype=np.float32)
        scaled = encoded[:, :self._scaled_width]
        if self._numeric:
            scaled[:, self._numeric_at] = matrix[:, self._numeric]
        for slot, first, has_time in self._datetime_at:
            column = seconds[:, slot] if seconds is not None else np.full(n, np.nan)
            parts = datetime_parts(column, has_time)
            scaled[:, first:first + parts.shape[1]] = parts
        scaled -= self._mean
        scaled /= self._std
        missing = np.isnan(scaled)
        if missing.any():
            for at, source in self._indicators:
                encoded[:, at] = missing[:, source]
            scaled[missing] = 0.0
        rows = np.arange(n)
        for k, offset, width, slot in self._blocks:
            index = matrix[:, k]
            absent = np.isnan(index)
            if slot:
                encoded[rows[absent], offset + width] = 1.0
            index = np.where(absent, -1, index).astype(np.int64)
            known = index >= 0
            encoded[rows[known], offset + index[known]] = 1.0
        return encoded

    def encode_table(self, table: ParsedTable, rows: np.ndarray | None = None) -> np.ndarray:
        """Encode stored rows of a dataset (string columns hold dataset category codes, NaN missing)."""
        position = {c["name"]: j for j, c in enumerate(table.columns)}
        values = table.values if rows is None else table.values[rows]
        # The numeric features in one gather (a column at a time took most of a batch's encoding).
        numeric_at = [k for k, f in enumerate(self.features) if f["kind"] == "numeric"]
        sources = [position[self.features[k]["name"]] for k in numeric_at]
        if len(numeric_at) == len(self.features):
            matrix = np.take(values, sources, axis=1)
        else:
            matrix = np.zeros((values.shape[0], len(self.features)), dtype=np.float32)
            if numeric_at:
                matrix[:, numeric_at] = np.take(values, sources, axis=1)
        seconds = None
        if self._datetime:
            datetimes = table.datetimes
            assert datetimes is not None, "a datetime feature without the table's datetimes"
            chosen = datetimes if rows is None else datetimes[rows]
            seconds = np.stack([chosen[:, table.columns[position[self.feature_names[k]]]["slot"]]
                                for k in self._datetime], axis=1)
        for k, feature in enumerate(self.features):
            j = position[feature["name"]]
            source = values[:, j]
            if feature["kind"] == "string":
                index = self._category_index[k]
                lookup = np.array([index.get(c, self._unknown[k]) for c in table.columns[j]["categories"]],
                                  dtype=np.float32)
                present = ~np.isnan(source)
                matrix[:, k] = np.nan
                matrix[present, k] = lookup[source[present].astype(np.int64)]
        return self._encode(matrix, seconds)

    def targets_from_table(self, table: ParsedTable, rows: np.ndarray | None = None) -> np.ndarray:
        """Return training labels: class indices (int64) or standardized targets (n, k)."""
        names = [c["name"] for c in table.columns]
        values = table.values if rows is None else table.values[rows]
        target_names = self.target["names"]
        if self.task == "classification":
            column = table.columns[names.index(target_names[0])]
            raw = values[:, names.index(target_names[0])]
            if column["kind"] == "string":
                position = {c: i for i, c in enumerate(self.classes or [])}
                lookup = np.array([position[c] for c in column["categories"]], dtype=np.int64)
                return lookup[raw.astype(np.int64)]
            return np.searchsorted(np.array(self.classes, dtype=np.float64), raw.astype(np.float64))
        columns = [names.index(t) for t in target_names]
        standardized = (values[:, columns].astype(np.float64) - self._target_mean) / self._target_std
        return standardized.astype(np.float32)

    def _cell(self, k: int, value: Any, field: str, errors: list[FieldError]) -> float:
        """Return one raw cell as the raw matrix holds it (NaN when missing), or note its error."""
        feature = self.features[k]
        name = feature["name"]
        # JSON null and an empty string are missing values, as in an upload.
        if value is None or (isinstance(value, str) and not value.strip()):
            return math.nan
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            errors.append({"field": field, "message": f"column {name!r}: {type(value).__name__} is not allowed"})
            return 0.0
        if feature["kind"] == "numeric":
            try:
                number = float(value) if isinstance(value, (int, float)) else parse_number(str(value))
            except OverflowError:
                number = None
            if number is None or not math.isfinite(number):
                errors.append({"field": field,
                               "message": f"column {name!r} is numeric; got {str(value)[:50]!r}"})
                return 0.0
            if abs(number) > FLOAT32_MAX:
                errors.append({"field": field, "message": f"column {name!r}: {number:g} is out of "
                                                          f"the float32 range"})
                return 0.0
            return number
        if feature["kind"] == "datetime":
            parsed = parsing.parse_datetime(value.strip()) if isinstance(value, str) else None
            if parsed is None:
                errors.append({"field": field, "message": f"column {name!r} is a date; give an ISO 8601 date "
                                                          f"or date-time, got {str(value)[:50]!r}"})
                return 0.0
            return parsed[0]
        if isinstance(value, float) and value.is_integer():
            value = repr(value)
        return float(self._category_index[k].get(str(value).strip(), self._unknown[k]))

    def _encode_raw(self, raw: np.ndarray) -> np.ndarray:
        """Encode a float64 raw matrix built cell by cell (datetime seconds in their own columns)."""
        seconds = raw[:, self._datetime] if self._datetime else None
        return self._encode(raw.astype(np.float32), seconds)

    def encode_inputs(self, inputs: list[Any], may_hold_booleans: bool = True) -> np.ndarray:
        """Encode raw rows given as lists in feature order; null (or "") is a missing value.

        `may_hold_booleans=False` (the body has no `true`/`false` anywhere) skips the
        per-value check that JSON booleans are not taken for numbers, the slowest part
        of a large all-numeric request.
        """
        width = len(self.features)
        if self.all_numeric:
            try:
                # A value beyond float32 becomes inf here and sends the rows to the checks below,
                # which name its cell: numpy's overflow warning would say nothing more. A null
                # becomes NaN, which also goes the careful way (a NaN token must stay an error).
                with np.errstate(over="ignore"):
                    matrix = np.asarray(inputs, dtype=np.float32)
            except (ValueError, TypeError, OverflowError):
                matrix = None
            if (matrix is not None and matrix.ndim == 2 and matrix.shape[1] == width
                    and np.isfinite(matrix).all()
                    and not (may_hold_booleans
                             and any(isinstance(v, bool) for row in inputs for v in row))):
                return self._encode(matrix, clean=True)
        errors: list[FieldError] = []
        raw = np.zeros((len(inputs), width), dtype=np.float64)
        for i, row in enumerate(inputs):
            if not isinstance(row, list) or len(row) != width:
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                errors.append({"field": f"inputs[{i}]", "message":
                               f"expected {width} values ({', '.join(self.feature_names)}), got {got}"})
                continue
            for k, value in enumerate(row):
                raw[i, k] = self._cell(k, value, f"inputs[{i}][{k}]", errors)
            if len(errors) >= 20:
                break
        if errors:
            raise InputError(errors[:20])
        return self._encode_raw(raw)

    def encode_records(self, records: list[Any], field: str = "records") -> np.ndarray:
        """Encode raw rows given as {column: value}; an absent or null feature is a missing value.

        Target columns and the dataset's other columns are ignored; any other key is an error.
        """
        errors: list[FieldError] = []
        known = self.known_columns
        raw = np.zeros((len(records), len(self.features)), dtype=np.float64)
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                errors.append({"field": f"{field}[{i}]", "message": "expected an object"})
                continue
            for key in record:
                if key not in known:
                    errors.append({"field": f"{field}[{i}].{key}",
                                   "message": f"unknown column {key!r}; the model takes "
                                              f"{', '.join(self.feature_names)}"})
            for k, name in enumerate(self.feature_names):
                raw[i, k] = self._cell(k, record.get(name), f"{field}[{i}].{name}", errors)
            if len(errors) >= 20:
                break
        if errors:
            raise InputError(errors[:20])
        return self._encode_raw(raw)

    def encode_csv(self, body: bytes, max_rows: int, max_columns: int = DEFAULT_MAX_COLUMNS) -> np.ndarray:
        """Encode raw rows given as CSV text: a header row naming the feature columns, then rows.

        Target columns and the dataset's other columns are ignored, as in records; an
        empty cell or one of the upload's NA tokens (its `na_values`, else
        parsing.NA_VALUES; `self.na_values`) is a missing value. An all-numeric model
        reads numeric text with pyarrow; anything else goes cell by cell through the rules
        of `records`, with errors on `csv[i].column` (i counts data rows from 0). A
        header of more than `max_columns` fields (MAX_COLUMNS) is refused before its
        names are split, and a wrong header's message lists at most MAX_ERRORS problems.
        """
        if header_wider_than(body, max_columns):
            raise InputError([{"field": "csv", "message": f"the header has more than {max_columns:,} fields; "
                                                          f"MAX_COLUMNS is {max_columns:,}"}])
        text = _csv_text(body)
        header_line, _, _rest = text.partition("\n")
        header = [name.strip() for name in next(csv.reader([header_line]), [])]
        named = set(header)
        problems = [f"unknown column {name!r}" for name in header if name not in self.known_columns]
        problems += [f"missing column {name!r}" for name in self.feature_names if name not in named]
        if not header_line.strip() or problems:
            listed = problems[:MAX_ERRORS]
            if len(problems) > MAX_ERRORS:
                listed.append(f"and {len(problems) - MAX_ERRORS} more")
            expected = f"the header row must name the columns {', '.join(self.feature_names)}"
            raise InputError([{"field": "csv", "message": "; ".join(listed + [expected])}])
        numeric = self._numeric_csv(body, header) if self.all_numeric else None
        if numeric is not None:
            matrix, clean = numeric
            if len(matrix) > max_rows:
                raise InputError([{"field": "csv", "message": f"at most {max_rows:,} rows per request"}])
            return self._encode(matrix, clean=clean)
        na_values = self.na_values
        records = []
        for i, cells in enumerate(row for row in csv.reader(io.StringIO(text)) if row):
            if i == 0:
                continue
            if i > max_rows:
                raise InputError([{"field": "csv", "message": f"at most {max_rows:,} rows per request"}])
            if len(cells) != len(header):
                raise InputError([{"field": f"csv[{i - 1}]", "message":
                                   f"expected {len(header)} fields ({', '.join(header)}), got {len(cells)}"}])
            records.append({name: None if cell.strip() in na_values else cell
                            for name, cell in zip(header, cells)})
        if not records:
            raise InputError([{"field": "csv", "message": "give at least one row after the header"}])
        return self.encode_records(records, field="csv")

    def _numeric_csv(self, body: bytes, header: list[str]) -> tuple[np.ndarray, bool] | None:
        """Read numeric CSV in feature order with pyarrow; None when it needs the careful path.

        Returns the raw matrix (NaN for a missing cell: empty or an NA token) and
        whether it has no missing cell.
        """
        import pyarrow as pa  # noqa: PLC0415 - loaded on the first CSV request only
        import pyarrow.csv as pa_csv  # noqa: PLC0415

        # A quoted NA token stays text and sends the body the careful way, which also calls it missing.
        convert = pa_csv.ConvertOptions(null_values=sorted(self.na_values), strings_can_be_null=False,
                                        quoted_strings_can_be_null=False)
        try:
            table = pa_csv.read_csv(io.BytesIO(body), convert_options=convert)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if ([name.strip() for name in table.column_names] != header or table.num_rows == 0
                or len(set(header)) != len(header)):
            return None
        matrix = np.empty((table.num_rows, len(self.features)), dtype=np.float32)
        clean = True
        for k, name in enumerate(self.feature_names):
            column = table.column(header.index(name))
            if not (pa.types.is_int64(column.type) or pa.types.is_float64(column.type)
                    or pa.types.is_null(column.type)):
                return None
            nulls = column.null_count
            values = column.cast(pa.float64()).to_numpy().astype(np.float64, copy=False)
            given = values if not nulls else values[~np.asarray(column.is_null())]
            # Text that pyarrow reads as a non-finite float (not an NA token) is an error the careful path names.
            if not np.isfinite(given).all() or (np.abs(given) > FLOAT32_MAX).any():
                return None
            clean = clean and not nulls
            matrix[:, k] = values
        return matrix, clean

    # Decoding -------------------------------------------------------------

    def decode_arrays(self, outputs: np.ndarray, loss: str) -> tuple[np.ndarray | None, np.ndarray]:
        """Return network outputs as arrays: the one decoding /predict, evaluations and batch files share.

        Parameters
        ----------
        outputs
            The network's outputs, (n, k) or (n,) for a binary model.
        loss
            The model's training loss (a binary cross-entropy model has one output per row).

        Returns
        -------
        chosen, values
            For classification, each row's class index (into `classes`) and the class
            probabilities (n, k) float64; for regression, None and the predictions in the
            targets' units (n, targets) float64.
        """
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.task == "classification":
            if loss == "binary_cross_entropy":
                positive = outputs.reshape(-1)
                probabilities = np.stack([1.0 - positive, positive], axis=1)
            else:
                probabilities = outputs
            return probabilities.argmax(axis=1), probabilities
        return None, outputs.reshape(outputs.shape[0], -1) * self._target_std + self._target_mean

    def decode(self, outputs: np.ndarray, loss: str) -> dict[str, Any]:
        """Turn network outputs into predictions in the dataset's own labels or scale (decode_arrays as lists)."""
        chosen, values = self.decode_arrays(outputs, loss)
        if chosen is not None:
            classes = self.classes or []
            return {"predictions": [classes[k] for k in chosen.tolist()],
                    "probabilities": values.tolist(), "classes": classes}
        if values.shape[1] == 1:
            return {"predictions": values[:, 0].tolist(), "targets": self.target["names"]}
        return {"predictions": values.tolist(), "targets": self.target["names"]}
