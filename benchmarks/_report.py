"""What every benchmark shares: the machine's description, and its figures recorded.

Each figure of a run is one row of benchmarks/history.csv (every run, oldest first);
benchmarks/README.md shows the latest value of each figure in one table, rewritten
from the CSV after every row.
"""

from __future__ import annotations

import csv
import os
import platform
import re
import time
from pathlib import Path

README = Path(__file__).with_name("README.md")
HISTORY = Path(__file__).with_name("history.csv")
HISTORY_COLUMNS = ("date (UTC)", "benchmark", "figure", "value", "baseline", "baseline value", "ratio", "target",
                   "machine")
# The README's latest table sits between these two lines; they are added at the end when missing.
LATEST_START = "<!-- latest figures: written by benchmarks/_report.py from history.csv; do not edit -->"
LATEST_END = "<!-- end of latest figures -->"
LATEST_HEADER = ("| benchmark | figure | value | baseline | baseline value | ratio | target | date (UTC) | machine |\n"
                 "|---|---|---|---|---|---|---|---|---|\n")
# Numbers that a run measures rather than names, in a figure's name: those in parentheses
# ("(peak +121 MiB)", "(round trip 26.0)"), at the start of a clause (", 14 jobs done during
# the load") and counts of runs ("median of 3 rounds"). Two rows are the same figure when
# their names agree but for these.
_NUMBER = re.compile(r"\d[\d,.]*")
_PARENTHESES = re.compile(r"\([^()]*\)")
_COUNTED = re.compile(r"(, |median of )\d[\d,.]*")


def machine(extra: str = "") -> str:
    """Describe this machine: CPU model, cores, load average now (the machine may be shared)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = re.sub(r"\s+", " ", model.replace("(R)", "").replace("(TM)", ""))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    text = f"{model}, {os.cpu_count()} cores, load {load}"
    return f"{text}, {extra}" if extra else text


def append_row(section: str, figure: str, value: str, baseline: str, baseline_value: str,
               ratio: float | None, target: str, machine_text: str) -> None:
    """Record one figure of this run: a row of benchmarks/history.csv, then the README's latest table.

    Parameters
    ----------
    section
        The benchmark, named as its README section: "Uploads (benchmarks/upload.py)".
    figure, value, baseline, baseline_value, target
        As shown; `baseline` and `target` may be empty.
    ratio
        value / baseline value, or None when there is none.
    machine_text
        `machine()`'s description, with anything the run adds.
    """
    row = {"date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "benchmark": section, "figure": figure,
           "value": value, "baseline": baseline, "baseline value": baseline_value,
           "ratio": "" if ratio is None else f"{ratio:.2f}x", "target": target, "machine": machine_text}
    new_file = not HISTORY.exists() or HISTORY.stat().st_size == 0
    with HISTORY.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    write_latest_table()


def read_history() -> list[dict[str, str]]:
    """Return every recorded row of benchmarks/history.csv, oldest first."""
    if not HISTORY.exists():
        return []
    with HISTORY.open(newline="") as handle:
        return list(csv.DictReader(handle))


def figure_key(row: dict[str, str]) -> tuple[str, str, str]:
    """Return what makes two rows the same figure: benchmark, name but its measured numbers, baseline."""
    name = _PARENTHESES.sub(lambda match: _NUMBER.sub("N", match.group()), row["figure"])
    return row["benchmark"], _COUNTED.sub(r"\1N", name), row["baseline"]


def latest_rows(history: list[dict[str, str]]) -> list[dict[str, str]]:
    """Return the latest row of each figure: by benchmark (in order of their first row), newest run first.

    Within a benchmark the figures of one run keep the order in which the run wrote them.
    """
    latest: dict[tuple[str, str, str], int] = {}
    benchmarks: dict[str, int] = {}
    for index, row in enumerate(history):
        latest[figure_key(row)] = index
        benchmarks.setdefault(row["benchmark"], len(benchmarks))
    order = sorted(latest.values())
    order.sort(key=lambda i: history[i]["date (UTC)"], reverse=True)  # stable: a run's rows keep their order
    order.sort(key=lambda i: benchmarks[history[i]["benchmark"]])
    return [history[i] for i in order]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def latest_table(history: list[dict[str, str]]) -> str:
    """Render the README's table of the latest figures."""
    lines = []
    for row in latest_rows(history):
        script = re.search(r"benchmarks/(\w+\.py)", row["benchmark"])
        name = script.group(1) if script else row["benchmark"]
        cells = [name, row["figure"], row["value"], row["baseline"], row["baseline value"], row["ratio"],
                 row["target"], row["date (UTC)"], row["machine"]]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |\n")
    return LATEST_HEADER + "".join(lines)


def write_latest_table() -> None:
    """Rewrite the latest table of benchmarks/README.md from benchmarks/history.csv."""
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{LATEST_START}\n{latest_table(read_history())}{LATEST_END}\n"
    if LATEST_START in text and LATEST_END in text:
        start = text.index(LATEST_START)
        end = text.index(LATEST_END, start) + len(LATEST_END)
        if text[end:end + 1] == "\n":
            end += 1
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n## Latest figures\n\n" + block
    README.write_text(text)


def print_ratio(figure: str, value: float, baseline: str, baseline_value: float, unit: str) -> float:
    """Print one figure against its baseline and return the ratio."""
    ratio = value / baseline_value if baseline_value else float("nan")
    print(f"{figure}: {value:,.2f} {unit}   {baseline}: {baseline_value:,.2f} {unit}   ratio {ratio:.2f}x")
    return ratio
