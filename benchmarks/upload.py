"""Dataset uploads: CSV parsers compared, a 100 MB upload through the real API process, then the other formats.

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

3. The other formats, on the same table: Parquet (written by pyarrow with its
   defaults, as pandas' to_parquet writes it), JSON Lines, and the CSV with 10% of
   its cells missing (written empty, ``NA`` and ``nan``, a third each). For each, and
   the clean CSV as the baseline: the service's parser alone in a fresh child
   process (rows/s, MB/s, peak memory), then end to end through the API, --repeat
   times, the formats taking turns so that the machine's load falls on all alike.

Targets: >= 50 MB/s, peak <= 3 x array + 200 MB; Parquet rows/s >= CSV rows/s, JSON Lines
>= 25 MB/s, CSV with 10% missing cells within 10% of the clean CSV's rows/s; the same peak
limit for every format.
Run: ``python benchmarks/upload.py [--rows N] [--repeat N] [--postgres] [--skip-parsers] [--skip-formats]
[--only-formats] [--no-readme]``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
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
MISSING_SHARE = 0.10
# The formats compared (label -> the service's format); the clean CSV is the baseline.
CLEAN_CSV = "CSV"
FORMAT_LABELS = {CLEAN_CSV: "csv", "CSV with 10% missing cells": "csv", "JSON Lines": "jsonl", "Parquet": "parquet"}
# What the issue asks of each format, against the clean CSV's rows/s (None: nothing asked).
ROWS_TARGETS = {"CSV with 10% missing cells": 0.9, "Parquet": 1.0}
JSONL_TARGET_MB_S = 25
SECTION = "Uploads (benchmarks/upload.py)"
EXACT = "csv module (exact rules)"
SERVICE = "service (pyarrow blocks + checks)"
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CONTENT_TYPES = {".csv": "text/csv", ".jsonl": "application/x-ndjson", ".parquet": "application/vnd.apache.parquet"}


def make_csv(path: Path, rows: int) -> None:
    """Write `rows` rows of 12 numeric columns (about 106 bytes a row)."""
    rng = np.random.default_rng(0)
    with path.open("w") as handle:
        handle.write(",".join(f"x{i}" for i in range(COLUMNS - 1)) + ",y\n")
        for start in range(0, rows, 100_000):
            np.savetxt(handle, rng.normal(size=(min(100_000, rows - start), COLUMNS)) * 10,
                       fmt="%.5f", delimiter=",")


def make_formats(csv_path: Path, rows: int) -> dict[str, Path]:
    """Write the table of `csv_path` in the other formats (once; kept next to it); return label -> file."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    stem = csv_path.with_suffix("")
    paths = {CLEAN_CSV: csv_path, "CSV with 10% missing cells": Path(f"{stem}-missing.csv"),
             "JSON Lines": stem.with_suffix(".jsonl"), "Parquet": stem.with_suffix(".parquet")}
    if not paths["Parquet"].exists():
        pq.write_table(pa_csv.read_csv(csv_path), paths["Parquet"])  # the same values, pyarrow's defaults
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(COLUMNS - 1)] + ["y"]
    record = "{" + ", ".join(f'"{name}": %.5f' for name in names) + "}"
    if not paths["JSON Lines"].exists():
        with paths["JSON Lines"].open("w") as handle:
            for start in range(0, rows, 100_000):
                np.savetxt(handle, rng.normal(size=(min(100_000, rows - start), COLUMNS)) * 10, fmt=record)
    if not paths["CSV with 10% missing cells"].exists():
        rng = np.random.default_rng(0)
        with paths["CSV with 10% missing cells"].open("wb") as handle:
            handle.write((",".join(names) + "\n").encode())
            for chunk, start in enumerate(range(0, rows, 100_000)):
                values = rng.normal(size=(min(100_000, rows - start), COLUMNS)) * 10
                values[rng.random(values.shape) < MISSING_SHARE] = np.nan
                text = io.BytesIO()
                np.savetxt(text, values, fmt="%.5f", delimiter=",")  # NaN is written nan, an NA token
                token = (b"", b"NA", b"nan")[chunk % 3]  # a third of the chunks each
                handle.write(re.sub(rb"(?<![^,\n])nan(?![^,\n])", token, text.getvalue()))
    return paths


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


def format_parsers() -> dict[str, tuple[str, Callable[[Path], np.ndarray]]]:
    """The service's parser of each format (formats.parse_upload, as the API calls it)."""

    def reader(fmt: str) -> Callable[[Path], np.ndarray]:
        def parse(path: Path) -> np.ndarray:
            from service.core.data import formats
            return formats.parse_upload(path, fmt).values
        return parse

    return {f"service: {label}": ("service.core.data.formats", reader(fmt)) for label, fmt in FORMAT_LABELS.items()}


def run_parser(name: str, path: Path, repeat: int) -> None:
    """Child process: time one parser (best of `repeat`) and print {seconds, peak_mib} as JSON."""
    import importlib

    module, parse = {**parsers(), **format_parsers()}[name]
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


def child_parser(name: str, path: Path, repeat: int) -> dict[str, float]:
    """Run one parser in a fresh process; return {seconds, peak_mib} (or {missing: module})."""
    done = subprocess.run([sys.executable, __file__, "--parser", name, "--file", str(path), "--repeat", str(repeat)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_parsers(path: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """Run every parser in its own process; return name -> (MB/s, peak MiB above its start)."""
    size_mb = path.stat().st_size / 1e6
    results = {}
    for name in parsers():
        runs = 1 if name == EXACT else repeat  # the exact path takes ~7 s a run
        result = child_parser(name, path, runs)
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
            response = requests.post(f"{base}/v1/datasets", files={"file": (f"big{path.suffix}", handle,
                                                                            CONTENT_TYPES[path.suffix])},
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
    parser.add_argument("--skip-formats", action="store_true", help="no Parquet, JSON Lines, CSV with missing cells")
    parser.add_argument("--only-formats", action="store_true", help="only the other formats (and the clean CSV)")
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

    if not args.only_formats:
        csv_section(args, path, size_mb, array_mb)
    if not args.skip_formats:
        formats_section(args, make_formats(path, args.rows), array_mb)


def csv_section(args: argparse.Namespace, path: Path, size_mb: float, array_mb: float) -> None:
    """Parts 1 and 2: the CSV parsers compared, then the CSV uploaded through the API."""
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


def formats_section(args: argparse.Namespace, paths: dict[str, Path], array_mb: float) -> None:
    """Part 3: each format's parser alone (a fresh process each), then uploads, the formats taking turns."""
    store = "PostgreSQL" if args.postgres else "SQLite"
    limit = 3 * array_mb + 200
    alone: dict[str, tuple[float, float, float]] = {}  # label -> (rows/s, MB/s, peak MiB)
    for label, path in paths.items():
        result = child_parser(f"service: {label}", path, args.repeat)
        size_mb = path.stat().st_size / 1e6
        alone[label] = (args.rows / result["seconds"], size_mb / result["seconds"], result["peak_mib"])
        print(f"parse {label:27s} ({size_mb:5.0f} MB): {alone[label][0]:10,.0f} rows/s {alone[label][1]:6.1f} MB/s "
              f"peak +{result['peak_mib']:.0f} MiB")
    rates: dict[str, list[float]] = {label: [] for label in paths}
    peaks: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(args.repeat):
        for label, path in paths.items():
            rate, peak, _before = upload(path, args.postgres)
            rates[label].append(rate)
            peaks[label].append(peak)
    ends: dict[str, tuple[float, float, float]] = {}  # label -> (rows/s, MB/s, peak MiB): median, highest
    for label, path in paths.items():
        mb_s = statistics.median(rates[label])
        ends[label] = (mb_s * 1e6 / path.stat().st_size * args.rows, mb_s, max(peaks[label]))
        print(f"upload {label:27s} ({store}): {ends[label][0]:10,.0f} rows/s {mb_s:6.1f} MB/s, API worker peak "
              f"{ends[label][2]:.0f} MiB (limit {limit:.0f}: {ends[label][2] / limit:.2f}x)")
    for what, figures in (("parser alone", alone), ("upload end to end", ends)):
        baseline = figures[CLEAN_CSV][0]
        for label, least in ROWS_TARGETS.items():
            ratio = figures[label][0] / baseline
            print(f"{what}: {label} {figures[label][0]:,.0f} rows/s vs CSV {baseline:,.0f} rows/s: {ratio:.2f}x "
                  f"(target >= {least:g}x)")
        print(f"{what}: JSON Lines {figures['JSON Lines'][1]:.1f} MB/s (target >= {JSONL_TARGET_MB_S}: "
              f"{figures['JSON Lines'][1] / JSONL_TARGET_MB_S:.2f}x)")
    if args.no_readme:
        return
    where = machine()
    for label in paths:
        rows_s, mb_s, peak = alone[label]
        if label != CLEAN_CSV:
            append_row(SECTION, f"parse {label}: service, rows/s (peak +{peak:.0f} MiB)", f"{rows_s:.0f}",
                       "service, CSV", f"{alone[CLEAN_CSV][0]:.0f}", rows_s / alone[CLEAN_CSV][0],
                       f">= {ROWS_TARGETS[label]:g}x" if label in ROWS_TARGETS else "", where)
    append_row(SECTION, "parse JSON Lines: service, MB/s", f"{alone['JSON Lines'][1]:.0f}", "target",
               str(JSONL_TARGET_MB_S), alone["JSON Lines"][1] / JSONL_TARGET_MB_S, ">= 1x", where)
    where = machine(f"median of {args.repeat} uploads each, formats taking turns")
    for label in paths:
        rows_s, mb_s, peak = ends[label]
        if label != CLEAN_CSV:
            append_row(SECTION, f"POST /v1/datasets {label} ({store}), rows/s", f"{rows_s:.0f}", "CSV",
                       f"{ends[CLEAN_CSV][0]:.0f}", rows_s / ends[CLEAN_CSV][0],
                       f">= {ROWS_TARGETS[label]:g}x" if label in ROWS_TARGETS else "", where)
        append_row(SECTION, f"API worker peak memory, {label} ({store}), MiB", f"{peak:.0f}", "3 x array + 200 MiB",
                   f"{limit:.0f}", peak / limit, "<= 1x", where)
    append_row(SECTION, f"POST /v1/datasets JSON Lines ({store}), MB/s", f"{ends['JSON Lines'][1]:.0f}", "target",
               str(JSONL_TARGET_MB_S), ends["JSON Lines"][1] / JSONL_TARGET_MB_S, ">= 1x", where)


if __name__ == "__main__":
    main()
