"""Preprocessing that is part of a model: fitted on the training split, applied by /predict.

Numeric features are standardized with the training split's mean and deviation,
string features one-hot encoded with the categories seen in training (a value
never seen in training encodes as all zeros), regression targets standardized
and mapped back at prediction. The fitted state is a JSON-able dict stored with
the model.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

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


def fit(table: ParsedTable, features: list[str], targets: list[str], task: str,
        classes: list[Any] | None, train_rows: np.ndarray) -> dict[str, Any]:
    """Fit the preprocessing on the training rows of a stored table."""
    names = [c["name"] for c in table.columns]
    train = table.values[train_rows]
    fitted_features = []
    for name in features:
        j = names.index(name)
        column = table.columns[j]
        if column["kind"] == "numeric":
            values = train[:, j].astype(np.float64)
            fitted_features.append({"name": name, "kind": "numeric",
                                    "mean": float(values.mean()) if len(values) else 0.0,
                                    "std": _deviation(values)})
        else:
            seen = np.unique(train[:, j].astype(np.int64))
            fitted_features.append({"name": name, "kind": "string",
                                    "categories": [column["categories"][k] for k in seen]})
    if task == "classification":
        target: dict[str, Any] = {"task": task, "names": targets, "classes": classes}
    else:
        columns = [names.index(t) for t in targets]
        values = train[:, columns].astype(np.float64)
        target = {"task": task, "names": targets,
                  "mean": [float(v) for v in values.mean(axis=0)],
                  "std": [_deviation(values[:, k]) for k in range(len(targets))]}
    return {"features": fitted_features, "target": target}


class Preprocessor:
    """Fitted preprocessing compiled for fast encoding of stored tables and raw rows."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.features: list[dict[str, Any]] = state["features"]
        self.feature_names = [f["name"] for f in self.features]
        self.target: dict[str, Any] = state["target"]
        self.task: str = self.target["task"]
        self.classes: list[Any] | None = self.target.get("classes")
        self._numeric = [k for k, f in enumerate(self.features) if f["kind"] == "numeric"]
        self.all_numeric = len(self._numeric) == len(self.features)
        self._mean = np.array([self.features[k]["mean"] for k in self._numeric], dtype=np.float32)
        self._std = np.array([self.features[k]["std"] for k in self._numeric], dtype=np.float32)
        self._category_index = {k: {c: i for i, c in enumerate(f["categories"])}
                                for k, f in enumerate(self.features) if f["kind"] == "string"}
        # Columns of the encoded matrix: numeric features first, then one block per string feature.
        self._blocks: list[tuple[int, int, int]] = []  # (feature index, offset, width)
        offset = len(self._numeric)
        for k, f in enumerate(self.features):
            if f["kind"] == "string":
                self._blocks.append((k, offset, len(f["categories"])))
                offset += len(f["categories"])
        self.input_width = offset
        if self.task == "regression":
            self._target_mean = np.array(self.target["mean"], dtype=np.float64)
            self._target_std = np.array(self.target["std"], dtype=np.float64)

    # Encoding -------------------------------------------------------------

    def _encode(self, matrix: np.ndarray) -> np.ndarray:
        """Encode a (n, features) matrix whose string features hold category indices (-1 unknown)."""
        n = matrix.shape[0]
        if self.all_numeric:
            return ((matrix - self._mean) / self._std).astype(np.float32, copy=False)
        encoded = np.zeros((n, self.input_width), dtype=np.float32)
        if self._numeric:
            encoded[:, :len(self._numeric)] = (matrix[:, self._numeric] - self._mean) / self._std
        rows = np.arange(n)
        for k, offset, _width in self._blocks:
            index = matrix[:, k].astype(np.int64)
            known = index >= 0
            encoded[rows[known], offset + index[known]] = 1.0
        return encoded

    def encode_table(self, table: ParsedTable, rows: np.ndarray | None = None) -> np.ndarray:
        """Encode stored rows of a dataset (string columns hold dataset category codes)."""
        names = [c["name"] for c in table.columns]
        values = table.values if rows is None else table.values[rows]
        matrix = np.empty((values.shape[0], len(self.features)), dtype=np.float32)
        for k, feature in enumerate(self.features):
            column = table.columns[names.index(feature["name"])]
            source = values[:, names.index(feature["name"])]
            if feature["kind"] == "numeric":
                matrix[:, k] = source
            else:
                index = self._category_index[k]
                lookup = np.array([index.get(c, -1) for c in column["categories"]], dtype=np.float32)
                matrix[:, k] = lookup[source.astype(np.int64)]
        return self._encode(matrix)

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
        feature = self.features[k]
        name = feature["name"]
        if value is None or isinstance(value, bool) or isinstance(value, (list, dict)):
            what = "missing" if value is None else f"{type(value).__name__} is not allowed"
            errors.append({"field": field, "message": f"column {name!r}: {what}"})
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
        if isinstance(value, float) and value.is_integer():
            value = repr(value)
        return float(self._category_index[k].get(str(value).strip(), -1))

    def encode_inputs(self, inputs: list[Any], may_hold_booleans: bool = True) -> np.ndarray:
        """Encode raw rows given as lists in feature order.

        `may_hold_booleans=False` (the body has no `true`/`false` anywhere) skips the
        per-value check that JSON booleans are not taken for numbers, the slowest part
        of a large all-numeric request.
        """
        width = len(self.features)
        if self.all_numeric:
            try:
                # A value beyond float32 becomes inf here and sends the rows to the checks below,
                # which name its cell: numpy's overflow warning would say nothing more.
                with np.errstate(over="ignore"):
                    matrix = np.asarray(inputs, dtype=np.float32)
            except (ValueError, TypeError, OverflowError):
                matrix = None
            if (matrix is not None and matrix.ndim == 2 and matrix.shape[1] == width
                    and np.isfinite(matrix).all()
                    and not (may_hold_booleans
                             and any(isinstance(v, bool) for row in inputs for v in row))):
                return self._encode(matrix)
        errors: list[FieldError] = []
        matrix = np.zeros((len(inputs), width), dtype=np.float32)
        for i, row in enumerate(inputs):
            if not isinstance(row, list) or len(row) != width:
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                errors.append({"field": f"inputs[{i}]", "message":
                               f"expected {width} values ({', '.join(self.feature_names)}), got {got}"})
                continue
            for k, value in enumerate(row):
                matrix[i, k] = self._cell(k, value, f"inputs[{i}][{k}]", errors)
            if len(errors) >= 20:
                break
        if errors:
            raise InputError(errors[:20])
        return self._encode(matrix)

    def encode_records(self, records: list[Any], field: str = "records") -> np.ndarray:
        """Encode raw rows given as {column: value}; target columns are ignored."""
        errors: list[FieldError] = []
        known = set(self.feature_names) | set(self.target["names"])
        matrix = np.zeros((len(records), len(self.features)), dtype=np.float32)
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
                if name not in record:
                    errors.append({"field": f"{field}[{i}].{name}", "message": f"missing column {name!r}"})
                else:
                    matrix[i, k] = self._cell(k, record[name], f"{field}[{i}].{name}", errors)
            if len(errors) >= 20:
                break
        if errors:
            raise InputError(errors[:20])
        return self._encode(matrix)

    def encode_csv(self, body: bytes, max_rows: int, max_columns: int = DEFAULT_MAX_COLUMNS) -> np.ndarray:
        """Encode raw rows given as CSV text: a header row naming the feature columns, then rows.

        Target columns are ignored, as in records. An all-numeric model reads clean
        numeric text with pyarrow; anything else goes cell by cell through the rules
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
        known = set(self.feature_names) | set(self.target["names"])
        named = set(header)
        problems = [f"unknown column {name!r}" for name in header if name not in known]
        problems += [f"missing column {name!r}" for name in self.feature_names if name not in named]
        if not header_line.strip() or problems:
            listed = problems[:MAX_ERRORS]
            if len(problems) > MAX_ERRORS:
                listed.append(f"and {len(problems) - MAX_ERRORS} more")
            expected = f"the header row must name the columns {', '.join(self.feature_names)}"
            raise InputError([{"field": "csv", "message": "; ".join(listed + [expected])}])
        matrix = self._numeric_csv(body, header) if self.all_numeric else None
        if matrix is not None:
            if len(matrix) > max_rows:
                raise InputError([{"field": "csv", "message": f"at most {max_rows:,} rows per request"}])
            return self._encode(matrix)
        records = []
        for i, cells in enumerate(row for row in csv.reader(io.StringIO(text)) if row):
            if i == 0:
                continue
            if i > max_rows:
                raise InputError([{"field": "csv", "message": f"at most {max_rows:,} rows per request"}])
            if len(cells) != len(header):
                raise InputError([{"field": f"csv[{i - 1}]", "message":
                                   f"expected {len(header)} fields ({', '.join(header)}), got {len(cells)}"}])
            records.append(dict(zip(header, cells)))
        if not records:
            raise InputError([{"field": "csv", "message": "give at least one row after the header"}])
        return self.encode_records(records, field="csv")

    def _numeric_csv(self, body: bytes, header: list[str]) -> np.ndarray | None:
        """Read clean numeric CSV in feature order with pyarrow; None when it needs the careful path."""
        import pyarrow as pa  # noqa: PLC0415 - loaded on the first CSV request only
        import pyarrow.csv as pa_csv  # noqa: PLC0415

        convert = pa_csv.ConvertOptions(null_values=[], strings_can_be_null=False,
                                        quoted_strings_can_be_null=False)
        try:
            table = pa_csv.read_csv(io.BytesIO(body), convert_options=convert)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if ([name.strip() for name in table.column_names] != header or table.num_rows == 0
                or len(set(header)) != len(header)):
            return None
        matrix = np.empty((table.num_rows, len(self.features)), dtype=np.float32)
        for k, name in enumerate(self.feature_names):
            column = table.column(header.index(name))
            if not (pa.types.is_int64(column.type) or pa.types.is_float64(column.type)):
                return None
            values = column.to_numpy().astype(np.float64, copy=False)
            if not np.isfinite(values).all() or (np.abs(values) > FLOAT32_MAX).any():
                return None
            matrix[:, k] = values
        return matrix

    # Decoding -------------------------------------------------------------

    def decode(self, outputs: np.ndarray, loss: str) -> dict[str, Any]:
        """Turn network outputs into predictions in the dataset's own labels or scale."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.task == "classification":
            if loss == "binary_cross_entropy":
                positive = outputs.reshape(-1)
                probabilities = np.stack([1.0 - positive, positive], axis=1)
            else:
                probabilities = outputs
            classes = self.classes or []
            chosen = probabilities.argmax(axis=1)
            return {"predictions": [classes[k] for k in chosen.tolist()],
                    "probabilities": probabilities.tolist(), "classes": classes}
        values = outputs.reshape(outputs.shape[0], -1) * self._target_std + self._target_mean
        if values.shape[1] == 1:
            return {"predictions": values[:, 0].tolist(), "targets": self.target["names"]}
        return {"predictions": values.tolist(), "targets": self.target["names"]}
