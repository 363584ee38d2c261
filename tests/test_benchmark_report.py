"""benchmarks/_report.py: a run's figures go to history.csv, and the README shows the latest of each."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import _report

README_TEXT = f"""# Benchmarks

Prose above the table.

{_report.LATEST_START}
| stale | table |
{_report.LATEST_END}

## Notes

Prose below the table.
"""


@pytest.fixture
def report_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    readme, history = tmp_path / "README.md", tmp_path / "history.csv"
    readme.write_text(README_TEXT)
    monkeypatch.setattr(_report, "README", readme)
    monkeypatch.setattr(_report, "HISTORY", history)
    return readme, history


def table_rows(readme: Path) -> list[list[str]]:
    """Return the cells of the latest table's rows (without its header)."""
    text = readme.read_text()
    table = text[text.index(_report.LATEST_START):text.index(_report.LATEST_END)].splitlines()[3:]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table]


def test_rows_go_to_the_csv_and_the_readme_shows_the_latest_of_each_figure(report_files, monkeypatch):
    readme, history = report_files
    monkeypatch.setattr(_report.time, "gmtime", lambda: (2026, 12, 1, 10, 0, 0, 1, 335, 0))
    _report.append_row("Uploads (benchmarks/upload.py)", "upload, MB/s (peak +100 MiB)", "40", "target", "50",
                       0.8, ">= 1x", "machine A")
    _report.append_row("Jobs (benchmarks/jobs.py)", "dispatch, median ms", "90", "target", "500", 0.18, "<= 1x",
                       "machine A")
    monkeypatch.setattr(_report.time, "gmtime", lambda: (2026, 12, 1, 11, 30, 0, 1, 335, 0))
    _report.append_row("Uploads (benchmarks/upload.py)", "upload, MB/s (peak +90 MiB)", "60", "target", "50",
                       1.2, ">= 1x", "machine B")
    _report.append_row("Uploads (benchmarks/upload.py)", "peak memory, MiB", "249", "", "", None, "", "machine B")

    with history.open(newline="") as handle:
        recorded = list(csv.DictReader(handle))
    assert list(recorded[0]) == list(_report.HISTORY_COLUMNS)
    assert [(row["date (UTC)"], row["figure"], row["value"], row["ratio"]) for row in recorded] == [
        ("2026-12-01 10:00", "upload, MB/s (peak +100 MiB)", "40", "0.80x"),
        ("2026-12-01 10:00", "dispatch, median ms", "90", "0.18x"),
        ("2026-12-01 11:30", "upload, MB/s (peak +90 MiB)", "60", "1.20x"),
        ("2026-12-01 11:30", "peak memory, MiB", "249", ""),
    ]

    # One row per figure (the upload's measured peak does not make it another), the newest run first.
    assert table_rows(readme) == [
        ["upload.py", "upload, MB/s (peak +90 MiB)", "60", "target", "50", "1.20x", ">= 1x", "2026-12-01 11:30",
         "machine B"],
        ["upload.py", "peak memory, MiB", "249", "", "", "", "", "2026-12-01 11:30", "machine B"],
        ["jobs.py", "dispatch, median ms", "90", "target", "500", "0.18x", "<= 1x", "2026-12-01 10:00",
         "machine A"],
    ]
    text = readme.read_text()
    assert "| stale | table |" not in text
    assert text.startswith("# Benchmarks\n\nProse above the table.\n") and text.endswith("Prose below the table.\n")


def test_a_readme_without_the_table_gets_one_at_the_end(report_files):
    readme, history = report_files
    readme.write_text("# Benchmarks\n\nProse.\n")
    _report.append_row("Engine (benchmarks/engine.py)", "W1 | samples/s", "68,401", "PyTorch CPU", "67,047", 1.02,
                       ">= 1.0x", "machine")
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nProse.\n\n## Latest figures\n")
    assert table_rows(readme)[0][:3] == ["engine.py", "W1 \\| samples/s", "68,401"]
    assert history.read_text().count("\n") == 2  # the header and the row
