"""Dataset uploads: CSV parsers compared, then a 100 MB upload through the real API process.

1. Parsers, in this process, on the same file (1M rows x 12 numeric columns, about
   100 MB): pyarrow's CSV reader (what service/parsing.py uses), polars, pandas,
   numpy.loadtxt, and the csv-module path (the exact rules; the fallback).
2. End to end: POST /v1/datasets (multipart) to the API under gunicorn, as
   compose runs it, on SQLite in a temporary DATA_DIR (``--postgres`` for
   PostgreSQL at 127.0.0.1). The rate counts the whole request: receiving the
   body, parsing, hashing, storing. The API worker's peak memory (VmHWM) is
   compared with the issue's limit, 3x the float32 array plus 200 MB.

Targets: >= 50 MB/s, peak <= 3 x array + 200 MB.
Run: ``python benchmarks/upload.py [--rows N] [--skip-parsers] [--no-readme]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._report import append_row, machine  # noqa: E402
from benchmarks._servers import api_server, worker_pids  # noqa: E402

COLUMNS = 12
SECTION = "Uploads (benchmarks/upload.py)"


def make_csv(path: Path, rows: int) -> None:
    """Write `rows` rows of 12 numeric columns (about 106 bytes a row)."""
    rng = np.random.default_rng(0)
    with path.open("w") as handle:
        handle.write(",".join(f"x{i}" for i in range(COLUMNS - 1)) + ",y\n")
        for start in range(0, rows, 100_000):
            np.savetxt(handle, rng.normal(size=(min(100_000, rows - start), COLUMNS)) * 10,
                       fmt="%.5f", delimiter=",")


def parsers() -> dict[str, object]:
    """The candidates, each a function path -> float32 matrix."""
    from service import parsing

    def service_parser(path: Path) -> np.ndarray:
        return parsing.parse_csv(path).values

    def csv_module(path: Path) -> np.ndarray:
        header, rows = parsing._csv_rows(path, "file")
        return parsing.parse_rows(header, rows, field="file", row_field=None).values

    def pyarrow_plain(path: Path) -> np.ndarray:
        import pyarrow.csv as pa_csv
        table = pa_csv.read_csv(path)
        return np.column_stack([c.to_numpy().astype(np.float32) for c in table.columns])

    def polars_reader(path: Path) -> np.ndarray:
        import polars
        return polars.read_csv(path).to_numpy().astype(np.float32)

    def pandas_reader(path: Path) -> np.ndarray:
        import pandas
        return pandas.read_csv(path, dtype=np.float64, na_filter=False).to_numpy(np.float32)

    def numpy_reader(path: Path) -> np.ndarray:
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)

    return {"service (pyarrow + checks)": service_parser, "pyarrow read_csv": pyarrow_plain,
            "polars read_csv": polars_reader, "pandas read_csv (C)": pandas_reader,
            "numpy loadtxt": numpy_reader, "csv module (exact rules)": csv_module}


def compare_parsers(path: Path) -> dict[str, float]:
    size_mb = path.stat().st_size / 1e6
    rates = {}
    for name, parse in parsers().items():
        try:
            started = time.perf_counter()
            parse(path)  # type: ignore[operator]
            elapsed = time.perf_counter() - started
        except ImportError as error:
            print(f"{name:28s} not installed ({error.name})")
            continue
        rates[name] = size_mb / elapsed
        print(f"{name:28s} {elapsed:6.2f} s  {rates[name]:7.1f} MB/s")
    return rates


def upload(path: Path, database_url: str | None) -> tuple[float, float, float]:
    """POST the file to a fresh API; return (MB/s, peak MB of the API worker, its MB before)."""
    import requests

    with tempfile.TemporaryDirectory() as data_dir, api_server(data_dir, workers=1, database_url=database_url,
                                                               max_upload_mb=1024) as base:
        pid = worker_pids()[0]
        before = _vm(pid, "VmHWM")
        with path.open("rb") as handle:
            started = time.perf_counter()
            response = requests.post(f"{base}/v1/datasets", files={"file": ("big.csv", handle, "text/csv")},
                                     data={"name": "big"}, timeout=600)
            elapsed = time.perf_counter() - started
        response.raise_for_status()
        peak = _vm(pid, "VmHWM")
    return path.stat().st_size / 1e6 / elapsed, peak, before


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-parsers", action="store_true", help="only the end-to-end upload")
    parser.add_argument("--postgres", action="store_true", help="store in PostgreSQL at 127.0.0.1:5432/test")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    data = ROOT / "benchmarks" / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = data / f"upload-{args.rows}x{COLUMNS}.csv"
    if not path.exists():
        make_csv(path, args.rows)
    size_mb = path.stat().st_size / 1e6
    array_mb = args.rows * COLUMNS * 4 / 2**20
    print(f"{path.name}: {size_mb:.1f} MB, float32 array {array_mb:.0f} MiB")
    where = machine()

    if not args.skip_parsers:
        rates = compare_parsers(path)
        slow = rates.get("csv module (exact rules)")
        if not args.no_readme and slow:
            for name, rate in rates.items():
                if name != "csv module (exact rules)":
                    append_row(SECTION, f"parse {size_mb:.0f} MB CSV: {name}, MB/s", f"{rate:.0f}",
                               "csv module", f"{slow:.0f}", rate / slow, "", where)

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test" if args.postgres else None
    rate, peak, before = upload(path, url)
    limit = 3 * array_mb + 200
    print(f"upload through the API: {rate:.1f} MB/s (target >= 50: {rate / 50:.2f}x of it)")
    print(f"API worker peak memory: {peak:.0f} MiB (before: {before:.0f}); limit 3 x {array_mb:.0f} + 200 "
          f"= {limit:.0f} MiB: {peak / limit:.2f}x of it")
    if not args.no_readme:
        store = "PostgreSQL" if args.postgres else "SQLite"
        append_row(SECTION, f"POST /v1/datasets {size_mb:.0f} MB CSV ({store}), MB/s", f"{rate:.0f}",
                   "target", "50", rate / 50, ">= 1x", where)
        append_row(SECTION, "API worker peak memory, MiB", f"{peak:.0f}", "3 x array + 200 MiB",
                   f"{limit:.0f}", peak / limit, "<= 1x", where)


if __name__ == "__main__":
    main()
