"""Dataset uploads: CSV parsers compared, then a 100 MB upload through the real API process.

1. Parsers, each in a fresh child process (so that each has its own peak memory),
   on the same file (1M rows x 12 numeric columns, about 100 MB): the service's
   parser (pyarrow's CSV reader in 4 MB blocks, with the checks that keep it in
   agreement with the exact path), pyarrow's read_csv on the whole file, polars
   (eager, and streaming), pandas (whole file, and in chunks), numpy.loadtxt, and
   the csv-module path (the exact rules; the fallback). Each reports MB/s (best of
   --repeat) and its peak memory above the interpreter with the parser imported.
2. End to end, --repeat times: POST /v1/datasets (multipart, as service/client/client.py
   sends it) to a fresh API under gunicorn, as compose runs it, on SQLite in a
   temporary DATA_DIR (``--postgres``: a fresh PostgreSQL database at 127.0.0.1,
   dropped afterwards; a fresh store each time, so every upload stores its payload
   rather than finding it there). The rate counts the whole request: receiving
   the body, parsing, hashing, storing. The API worker's peak memory (VmHWM) is
   compared with the issue's limit, 3x the float32 array plus 200 MB. The
   service's parser alone is timed in the same run, between the uploads, so the
   two rates are read under the same load.

Targets: >= 50 MB/s, peak <= 3 x array + 200 MB.
Run: ``python benchmarks/upload.py [--rows N] [--repeat N] [--postgres] [--skip-parsers] [--no-readme]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._report import append_row, machine  # noqa: E402
from benchmarks._servers import api_server, auth_headers, create_api_key, service_env, worker_pids  # noqa: E402

COLUMNS = 12
SECTION = "Uploads (benchmarks/upload.py)"
EXACT = "csv module (exact rules)"
SERVICE = "service (pyarrow blocks + checks)"
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def make_csv(path: Path, rows: int) -> None:
    """Write `rows` rows of 12 numeric columns (about 106 bytes a row)."""
    rng = np.random.default_rng(0)
    with path.open("w") as handle:
        handle.write(",".join(f"x{i}" for i in range(COLUMNS - 1)) + ",y\n")
        for start in range(0, rows, 100_000):
            np.savetxt(handle, rng.normal(size=(min(100_000, rows - start), COLUMNS)) * 10,
                       fmt="%.5f", delimiter=",")


def parsers() -> dict[str, tuple[str, Callable[[Path], np.ndarray]]]:
    """The candidates: name -> (module to import first, function path -> float32 matrix)."""

    def service_parser(path: Path) -> np.ndarray:
        from service.core.data import parsing
        return parsing.parse_csv(path).values

    def csv_module(path: Path) -> np.ndarray:
        from service.core.data import parsing
        header, rows = parsing._csv_rows(path, "file")
        return parsing.parse_rows(header, rows, field="file", row_field=None).values

    def pyarrow_whole(path: Path) -> np.ndarray:
        import pyarrow.csv as pa_csv
        table = pa_csv.read_csv(path)
        return np.column_stack([c.to_numpy().astype(np.float32) for c in table.columns])

    def polars_eager(path: Path) -> np.ndarray:
        import polars
        return polars.read_csv(path).to_numpy().astype(np.float32)

    def polars_streaming(path: Path) -> np.ndarray:
        import polars
        frame = polars.scan_csv(path).select(polars.all().cast(polars.Float64).cast(polars.Float32))
        return frame.collect(engine="streaming").to_numpy()

    def pandas_whole(path: Path) -> np.ndarray:
        import pandas
        return pandas.read_csv(path, dtype=np.float64, na_filter=False).to_numpy(np.float32)

    def pandas_chunks(path: Path) -> np.ndarray:
        import pandas
        parts = [frame.to_numpy(np.float32) for frame in
                 pandas.read_csv(path, dtype=np.float64, na_filter=False, chunksize=65_536)]
        return np.concatenate(parts)

    def numpy_reader(path: Path) -> np.ndarray:
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)

    return {SERVICE: ("pyarrow.csv", service_parser), "pyarrow read_csv, whole file": ("pyarrow.csv", pyarrow_whole),
            "polars read_csv": ("polars", polars_eager), "polars scan_csv, streaming": ("polars", polars_streaming),
            "pandas read_csv (C)": ("pandas", pandas_whole),
            "pandas read_csv, 64k-row chunks": ("pandas", pandas_chunks),
            "numpy loadtxt": ("numpy", numpy_reader), EXACT: ("csv", csv_module)}


def run_parser(name: str, path: Path, repeat: int) -> None:
    """Child process: time one parser (best of `repeat`) and print {seconds, peak_mib} as JSON."""
    import importlib

    module, parse = parsers()[name]
    try:
        importlib.import_module(module)
        import service.core.data.parsing  # noqa: F401 - imported by every candidate's process alike
    except ImportError as error:
        print(json.dumps({"missing": error.name}))
        return
    before = _vm("self", "VmRSS")
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        values = parse(path)
        times.append(time.perf_counter() - started)
        assert values.shape[1] == COLUMNS and values.dtype == np.float32
        del values
    print(json.dumps({"seconds": min(times), "peak_mib": _vm("self", "VmHWM") - before}))


def compare_parsers(path: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """Run every parser in its own process; return name -> (MB/s, peak MiB above its start)."""
    size_mb = path.stat().st_size / 1e6
    results = {}
    for name in parsers():
        runs = 1 if name == EXACT else repeat  # the exact path takes ~7 s a run
        done = subprocess.run([sys.executable, __file__, "--parser", name, "--file", str(path), "--repeat", str(runs)],
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if "missing" in result:
            print(f"{name:34s} not installed ({result['missing']})")
            continue
        results[name] = (size_mb / result["seconds"], result["peak_mib"])
        print(f"{name:34s} {result['seconds']:6.2f} s  {results[name][0]:7.1f} MB/s  "
              f"peak +{result['peak_mib']:.0f} MiB")
    return results


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """Create an empty PostgreSQL database for one upload; drop it afterwards."""
    import sqlalchemy as sa

    name = f"bench_upload_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def upload(path: Path, postgres: bool) -> tuple[float, float, float]:
    """POST the file to a fresh API on a fresh store; return (MB/s, peak MiB of the API worker, its MiB before)."""
    import requests

    with tempfile.TemporaryDirectory() as data_dir, \
            (fresh_postgres() if postgres else _nothing()) as database_url, \
            api_server(data_dir, workers=1, database_url=database_url, max_upload_mb=1024) as base:
        headers = auth_headers(create_api_key(service_env(data_dir, database_url)))
        pid = worker_pids()[0]
        before = _vm(pid, "VmHWM")
        with path.open("rb") as handle:
            started = time.perf_counter()
            response = requests.post(f"{base}/v1/datasets", files={"file": ("big.csv", handle, "text/csv")},
                                     data={"name": "big"}, headers=headers, timeout=600)
            elapsed = time.perf_counter() - started
        response.raise_for_status()
        peak = _vm(pid, "VmHWM")
    return path.stat().st_size / 1e6 / elapsed, peak, before


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def parse_only(path: Path) -> float:
    """Time the service's parser in this process; return MB/s."""
    from service.core.data import parsing

    started = time.perf_counter()
    parsing.parse_csv(path)
    return path.stat().st_size / 1e6 / (time.perf_counter() - started)


def _vm(pid: int | str, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="uploads (and parser runs) to take the median of")
    parser.add_argument("--skip-parsers", action="store_true", help="only the end-to-end upload")
    parser.add_argument("--postgres", action="store_true",
                        help="store in a fresh PostgreSQL database at 127.0.0.1:5432 (dropped afterwards)")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--parser", help=argparse.SUPPRESS)  # child process: run one parser
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.parser:
        run_parser(args.parser, args.file, args.repeat)
        return

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
        results = compare_parsers(path, args.repeat)
        slow = results.get(EXACT)
        if not args.no_readme and slow:
            for name, (rate, peak) in results.items():
                if name != EXACT:
                    append_row(SECTION, f"parse {size_mb:.0f} MB CSV: {name}, MB/s (peak +{peak:.0f} MiB)",
                               f"{rate:.0f}", "csv module", f"{slow[0]:.0f}", rate / slow[0], "", where)

    store = "PostgreSQL" if args.postgres else "SQLite"
    rates, peaks, alone = [], [], []
    for _ in range(args.repeat):
        rate, peak, before = upload(path, args.postgres)
        alone.append(parse_only(path))
        rates.append(rate)
        peaks.append(peak)
        print(f"upload through the API ({store}): {rate:.1f} MB/s, API worker peak {peak:.0f} MiB "
              f"(before: {before:.0f}); the service's parser alone: {alone[-1]:.1f} MB/s")
    rate, peak, parse_rate = statistics.median(rates), max(peaks), statistics.median(alone)
    limit = 3 * array_mb + 200
    print(f"median of {args.repeat}: {rate:.1f} MB/s (target >= 50: {rate / 50:.2f}x of it); parsing alone "
          f"{parse_rate:.1f} MB/s")
    print(f"API worker peak memory, highest of {args.repeat}: {peak:.0f} MiB; limit 3 x {array_mb:.0f} + 200 "
          f"= {limit:.0f} MiB: {peak / limit:.2f}x of it")
    if not args.no_readme:
        where = machine(f"median of {args.repeat} uploads, {min(rates):.0f}-{max(rates):.0f} MB/s")
        append_row(SECTION, f"POST /v1/datasets {size_mb:.0f} MB CSV ({store}), MB/s", f"{rate:.0f}",
                   "target", "50", rate / 50, ">= 1x", where)
        append_row(SECTION, f"service parser alone, same run ({store}), MB/s", f"{parse_rate:.0f}",
                   "upload end to end", f"{rate:.0f}", parse_rate / rate, "", where)
        append_row(SECTION, f"API worker peak memory ({store}), MiB", f"{peak:.0f}", "3 x array + 200 MiB",
                   f"{limit:.0f}", peak / limit, "<= 1x", where)


if __name__ == "__main__":
    main()
