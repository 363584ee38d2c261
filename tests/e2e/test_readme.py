"""The README's walkthrough works: its marked shell blocks run, in order, against a live service."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = "<!-- walkthrough -->"
# The walkthrough's commands as they are; only curl is made to fail on an HTTP
# error (printing the problem document) so that a broken step stops the script.
PREAMBLE = """set -euo pipefail
curl() { command curl --show-error --fail-with-body --max-time 60 "$@"; }
"""

pytestmark = pytest.mark.slow


def walkthrough_blocks(text: str) -> list[str]:
    """Return the bodies of the fenced code blocks that directly follow the marker."""
    pattern = re.compile(re.escape(MARKER) + r"\s*\n```[a-z]*\n(.*?)\n```", re.DOTALL)
    return pattern.findall(text)


def last_json_object(output: str) -> dict:
    """Return the last pretty-printed JSON object (jq's output) in the output."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def test_readme_marks_the_whole_walkthrough() -> None:
    text = README.read_text()
    blocks = walkthrough_blocks(text)
    assert len(blocks) == text.count(MARKER) >= 5
    script = "\n".join(blocks)
    for step in ("/v1/datasets", "/v1/networks", "/v1/jobs", "/predict"):
        assert step in script, step


def test_readme_walkthrough_runs(open_stack, tool: Callable[[str, str], str]) -> None:
    """The walkthrough follows `make run`, which serves on 127.0.0.1 with AUTH=off: no key."""
    stack = open_stack
    tool("jq", "apt-get install jq")
    tool("curl", "apt-get install curl")
    script = PREAMBLE + "\n".join(walkthrough_blocks(README.read_text()))

    try:
        result = subprocess.run(["bash", "-c", script], cwd=ROOT, env={**stack.env, "BASE": stack.base_url},
                                capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the walkthrough did not finish in {exc.timeout}s\n{exc.stdout}\n{exc.stderr}")

    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "succeeded" in result.stdout, result.stdout
    prediction = last_json_object(result.stdout)
    assert prediction["predictions"] == ["setosa", "virginica"], result.stdout
    assert sorted(prediction["classes"]) == ["setosa", "versicolor", "virginica"]
