"""What every benchmark shares: the machine's description and a row in benchmarks/README.md."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

README = Path(__file__).with_name("README.md")
TABLE_HEADER = ("| date (UTC) | figure | value | baseline | baseline value | ratio | target | machine |\n"
                "|---|---|---|---|---|---|---|---|\n")


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
    """Append a result row to the table of `section` in benchmarks/README.md (created if missing)."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    ratio_text = "" if ratio is None else f"{ratio:.2f}x"
    row = f"| {stamp} | {figure} | {value} | {baseline} | {baseline_value} | {ratio_text} | {target} | {machine_text} |\n"
    text = README.read_text() if README.exists() else "# Benchmark results\n"
    heading = f"## {section}\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n{TABLE_HEADER}"
    start = text.index(heading) + len(heading)
    following = text.find("\n## ", start)
    end = len(text) if following == -1 else following + 1
    block = text[start:end]
    if TABLE_HEADER not in block:
        block = block.rstrip("\n") + "\n\n" + TABLE_HEADER
    # The row goes after the last line of the section's table.
    table_at = block.index(TABLE_HEADER)
    lines = block[table_at:].splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("|"):
        n += 1
    block = block[:table_at] + "".join(lines[:n]) + row + "".join(lines[n:])
    README.write_text(text[:start] + block + text[end:])


def print_ratio(figure: str, value: float, baseline: str, baseline_value: float, unit: str) -> float:
    """Print one figure against its baseline and return the ratio."""
    ratio = value / baseline_value if baseline_value else float("nan")
    print(f"{figure}: {value:,.2f} {unit}   {baseline}: {baseline_value:,.2f} {unit}   ratio {ratio:.2f}x")
    return ratio
