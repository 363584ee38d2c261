"""Print, or write into docs/operations.md, the table of every setting, made from `Settings`.

    .venv/bin/python scripts/settings_table.py           # print the table
    .venv/bin/python scripts/settings_table.py --write   # replace the table in docs/operations.md

The table sits between two marker comments; tests/service/test_settings.py fails when it
differs from what this script makes, so a setting cannot be added, or its default changed,
without the docs saying so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core.settings import Settings  # noqa: E402  (after the checkout is on the path)

DOC = ROOT / "docs" / "operations.md"
BEGIN = "<!-- settings table: made by scripts/settings_table.py --write -->"
END = "<!-- end of the settings table -->"


def shown_default(name: str) -> str:
    """Return a setting's default as the table shows it (a derived one as Settings words it)."""
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    default = field.default
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def table() -> str:
    """Return the markdown table: one row per setting, its default and what it means."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {shown_default(name)} | {meaning} |")
    return "\n".join(rows)


def document(text: str) -> str:
    """Return docs/operations.md's text with the table between the markers replaced."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest or END not in rest:
        raise SystemExit(f"{DOC} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the table in docs/operations.md")
    args = parser.parse_args()
    if args.write:
        DOC.write_text(document(DOC.read_text()))
    else:
        print(table())


if __name__ == "__main__":
    main()
