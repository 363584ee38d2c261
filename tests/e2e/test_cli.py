"""The `backprop` command against a live service (real API and Celery worker processes).

Most tests run on the SQLite stack; the watch-and-cancel test runs on both
backends. One test runs the command in a real terminal (tmux) to check that
the progress bar redraws in place.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from service.client.cli import main
from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text, linear_rows, pets_rows, skip_or_fail
from tests.e2e.conftest import BIN, ROOT
from tests.helpers import mlp

pytestmark = pytest.mark.slow

SQLITE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
MLP = mlp(activation="tanh")


def cli(stack: Any, *args: str, code: int = 0) -> Any:
    """Run `backprop --url STACK ARGS...`; check the exit code; return the result."""
    key = ["--api-key", stack.api_key] if stack.api_key else []
    result = CliRunner().invoke(main, ["--url", stack.base_url, *key, *args], catch_exceptions=False)
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{result.output}"
    return result


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def pets_csv(tmp_path: Path) -> str:
    return write(tmp_path / "pets.csv", csv_text(["weight", "colour", "animal"], pets_rows(160)))


def upload(stack: Any, path: str, *args: str) -> str:
    return cli(stack, "datasets", "upload", path, *args).output.split()[0]


@SQLITE
def test_upload_validate_train_watch_predict_and_export(stack, tmp_path, pets_csv):
    import onnxruntime

    result = cli(stack, "datasets", "upload", pets_csv, "--target", "animal", "--name", "pets")
    dataset_id = result.output.split()[0]
    assert "160 rows, classification of animal" in result.output
    assert dataset_id in cli(stack, "datasets", "list").output

    network = write(tmp_path / "net.json", json.dumps(MLP))
    result = cli(stack, "networks", "validate", network, "--dataset", dataset_id)
    assert "valid, 58 parameters for input width 4" in result.output
    bad = write(tmp_path / "bad.json", json.dumps({"layers": [{"type": "dense", "units": 0,
                                                               "activation": "wobbly"}]}))
    result = cli(stack, "networks", "validate", bad, code=1)
    assert "invalid" in result.output and "layers[0].activation" in result.output

    result = cli(stack, "train", "--dataset", dataset_id, "--network", network, "--epochs", "6",
                 "--learning-rate", "0.02", "--seed", "1", "--watch", "--poll", "0.1")
    lines = result.output.splitlines()
    # Not a terminal: plain text, one line per epoch, then the final metrics and the model.
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == [f"{k}/6" for k in range(1, 7)]
    assert all(re.search(r"loss \S+  val_loss \S+ .*elapsed \S+  eta \S+", line)
               for line in lines if line.startswith("epoch "))
    assert "\r" not in result.output and "final metrics: " in result.output
    model_id = re.search(r"succeeded; model (\S+)", result.output).group(1)
    job_id = lines[0].split()[1]
    assert job_id in cli(stack, "jobs", "list").output
    assert json.loads(cli(stack, "jobs", "show", job_id).output)["model_id"] == model_id

    rows = pets_rows(20, seed=9)
    rows_csv = write(tmp_path / "rows.csv", csv_text(["weight", "colour"], [r[:2] for r in rows]))
    out = tmp_path / "out.csv"
    cli(stack, "predict", model_id, "--input", rows_csv, "--output", str(out))
    with out.open(newline="") as file:
        scored = list(csv.DictReader(file))
    expected = stack.predict(model_id, {"inputs": [r[:2] for r in rows]})
    assert [r["predicted_animal"] for r in scored] == expected["predictions"]
    assert [float(r["p_dog"]) for r in scored] == pytest.approx([p[1] for p in expected["probabilities"]])
    assert scored[0]["colour"] == rows[0][1]

    onnx_file = tmp_path / "model.onnx"
    assert "onnx" in cli(stack, "models", "export", model_id, "--format", "onnx", "-o", str(onnx_file)).output
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (labels,) = session.run(["label"], {
        "weight": np.array([[r[0]] for r in rows], dtype=np.float32),
        "colour": np.array([[r[1]] for r in rows], dtype=object)})
    assert labels.tolist() == expected["predictions"]
    npz_file = tmp_path / "model.npz"
    cli(stack, "models", "export", model_id, "--format", "npz", "-o", str(npz_file))
    with np.load(npz_file, allow_pickle=False) as archive:
        assert json.loads(archive["__meta__"].tobytes())["model_id"] == model_id


@SQLITE
def test_api_errors_are_readable_and_exit_non_zero(stack, tmp_path, pets_csv):
    result = cli(stack, "datasets", "upload", pets_csv, "--target", "species", code=1)
    assert result.output.startswith("error: 422") and "target" in result.output

    dataset_id = upload(stack, pets_csv, "--target", "animal")
    network = write(tmp_path / "net.json", json.dumps(mlp((), outputs=5)))
    result = cli(stack, "train", "--dataset", dataset_id, "--network", network, "--batch-size", "0", code=1)
    assert "training.batch_size: Input should be greater than or equal to 1" in result.output

    assert "404 Not found: no job with id 'job_nope'" in cli(stack, "jobs", "show", "job_nope", code=1).output
    result = CliRunner().invoke(main, ["--url", "http://127.0.0.1:9", "datasets", "list"])
    assert result.exit_code == 1 and "cannot reach the service at http://127.0.0.1:9" in result.output


@SQLITE
def test_predict_names_the_csv_line_and_column_of_a_bad_value(stack, tmp_path, pets_csv):
    dataset_id = upload(stack, pets_csv, "--target", "animal")
    network = write(tmp_path / "net.json", json.dumps(MLP))
    result = cli(stack, "train", "--dataset", dataset_id, "--network", network, "--epochs", "2", "--watch",
                 "--poll", "0.1")
    model_id = re.search(r"model (\S+)", result.output).group(1)
    rows_csv = write(tmp_path / "rows.csv", csv_text(["colour", "weight"], [["black", 3.0], ["grey", "heavy"]]))

    result = cli(stack, "predict", model_id, "--input", rows_csv, code=1)
    assert "line 3, column weight" in result.output and "heavy" in result.output
    lacking = write(tmp_path / "lacking.csv", csv_text(["colour"], [["black"]]))
    assert "lacks the feature column(s) weight" in cli(stack, "predict", model_id, "--input", lacking,
                                                       code=1).output


def saturating(stack: Any, tmp_path: Path, rows: int) -> tuple[str, str]:
    """Upload 100 random features and write a network whose sigmoid layer saturates; return both."""
    rng = np.random.default_rng(0)
    wide = [[*np.round(rng.normal(size=100), 3), i % 2] for i in range(rows)]
    data = write(tmp_path / "wide.csv", csv_text([f"x{k}" for k in range(100)] + ["label"], wide))
    # Weights of std 1 on 100 standardized inputs: most sigmoid outputs sit at 0 or 1.
    network = write(tmp_path / "net.json", json.dumps(mlp((32,), "sigmoid", init="normal")))
    return upload(stack, data, "--target", "label"), network


SATURATION_WARNING = ("warning: saturation (dense_0): over half of a sigmoid/tanh layer's outputs sit at "
                      "the activation's bounds, where its gradient is nearly zero; standardize inputs, "
                      "use glorot init or relu.")


@SQLITE
def test_watch_warns_once_per_health_flag_naming_the_layer(stack, tmp_path):
    dataset_id, network = saturating(stack, tmp_path, 200)

    result = cli(stack, "train", "--dataset", dataset_id, "--network", network, "--epochs", "3",
                 "--optimizer", "sgd", "--learning-rate", "0.001", "--watch", "--poll", "0.1")

    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert warnings == [SATURATION_WARNING]


@pytest.mark.parametrize("stack", ["sqlite", "postgres"], indirect=True)
def test_watch_exits_non_zero_when_the_job_fails_or_is_cancelled(stack, tmp_path):
    prices = write(tmp_path / "prices.csv", csv_text(["a", "b", "price"], linear_rows(100)))
    dataset_id = upload(stack, prices, "--task", "regression")
    layer = {"type": "dense", "units": 64, "activation": "relu", "init": "normal"}
    diverging = write(tmp_path / "diverging.json", json.dumps({"layers": [
        layer, layer, {"type": "dense", "units": 1, "init": "normal"}]}))
    result = cli(stack, "train", "--dataset", dataset_id, "--network", diverging, "--epochs", "50",
                 "--learning-rate", "10", "--optimizer", "sgd", "--watch", "--poll", "0.1", code=3)
    assert "failed: loss became non-finite" in result.output

    data = write(tmp_path / "blobs.csv", csv_text(BLOBS_COLUMNS, blobs_rows(200)))
    dataset_id = upload(stack, data, "--target", "label")
    network = write(tmp_path / "net.json", json.dumps(MLP))

    result = cli(stack, "train", "--dataset", dataset_id, "--network", network, "--epochs", "5000",
                 "--batch-size", "1")
    job_id = result.output.split()[1]
    assert "follow it with: backprop jobs watch" in result.output
    assert job_id in cli(stack, "jobs", "cancel", job_id).output
    result = cli(stack, "jobs", "watch", job_id, "--poll", "0.1", code=4)
    assert f"job {job_id} was cancelled" in result.output


@SQLITE
def test_the_bar_redraws_in_place_in_a_terminal(stack, tmp_path, request):
    tmux = shutil.which("tmux")
    if tmux is None:
        skip_or_fail("tmux is not installed (apt-get install tmux)")
    dataset_id, network = saturating(stack, tmp_path, 1500)
    # The installed console script where `pip install -e .` made one, else the module.
    command = [str(BIN / "backprop")] if (BIN / "backprop").exists() else [sys.executable, "-m", "service.client.cli"]
    command += ["--url", stack.base_url, "--api-key", stack.api_key, "train", "--dataset", dataset_id, "--network",
                network,
                "--epochs", "30", "--batch-size", "16", "--optimizer", "sgd", "--learning-rate", "0.001",
                "--poll", "0.1", "--watch"]
    done = tmp_path / "exit-code"
    shell = shlex.join(command) + f"; echo $? > {shlex.quote(str(done))}; sleep 60"
    socket = f"backprop-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    subprocess.run([tmux, "-L", socket, "new-session", "-d", "-x", "160", "-y", "20", shell],
                   check=True, env=env, cwd=ROOT)
    request.addfinalizer(lambda: subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True))

    def pane() -> list[str]:
        text = subprocess.run([tmux, "-L", socket, "capture-pane", "-p", "-J", "-S", "-200"], check=True,
                              capture_output=True, text=True).stdout
        return [line for line in text.splitlines() if line.strip()]

    bars = re.compile(r"\|\s*(\d+)/30\b")
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while not done.exists() and time.monotonic() < deadline:
        lines = pane()
        on_bar = [line for line in lines if bars.search(line)]
        assert len(on_bar) <= 1, "the bar printed a new line per update:\n" + "\n".join(lines)
        if on_bar:
            seen.add(int(bars.search(on_bar[0]).group(1)))
        time.sleep(0.1)  # the sampling interval: every frame seen is checked, so this is no wait-for
    lines = pane()
    print(f"terminal after the run (bar seen at epochs {sorted(seen)}):", *lines, sep="\n")
    assert done.exists() and done.read_text().strip() == "0", "\n".join(lines)
    on_bar = [line for line in lines if bars.search(line)]
    assert len(on_bar) == 1, "\n".join(lines)
    seen.add(int(bars.search(on_bar[0]).group(1)))
    assert len(seen) >= 2, f"the bar showed only epochs {sorted(seen)}"
    assert re.search(r"loss \S+ +val_loss \S+ .*elapsed \S+ +eta \S+ +\[! saturation\]", on_bar[0]), on_bar[0]
    # The warning is printed once, above the bar, which stays the last line of the run.
    assert lines.index(SATURATION_WARNING) < lines.index(on_bar[0])
    assert [line for line in lines if line.startswith("warning: ")] == [SATURATION_WARNING]
    assert any("succeeded; model" in line for line in lines), "\n".join(lines)


def test_the_client_module_needs_nothing_but_requests():
    # service/__init__ builds the Flask app; the client file itself must work without it (a notebook).
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('client', 'service/client/client.py')\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "assert hasattr(module, 'Client')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'service', 'backprop', 'numpy')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_url_and_api_key_come_from_the_environment():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    seen: list[tuple[str, str | None]] = []

    class EmptyList(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append((self.path, self.headers.get("Authorization")))
            body = b'{"items": [], "next_cursor": null}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), EmptyList)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = CliRunner().invoke(main, ["jobs", "list"],
                                    env={"BACKPROP_URL": url, "BACKPROP_API_KEY": "s3cret"})
        assert result.exit_code == 0, result.output
        result = CliRunner().invoke(main, ["--url", url, "--api-key", "other", "datasets", "list"],
                                    env={"BACKPROP_URL": "http://127.0.0.1:9"})
        assert result.exit_code == 0, result.output
    finally:
        server.shutdown()
    assert seen == [("/v1/jobs?limit=50", "Bearer s3cret"), ("/v1/datasets?limit=1000", "Bearer other")]


@SQLITE
def test_a_missing_or_refused_key_says_how_to_get_one(stack):
    for key, says in [([], "pass --api-key KEY or set BACKPROP_API_KEY"),
                      (["--api-key", "bp_wrong"], "the API key was refused")]:
        result = CliRunner().invoke(main, ["--url", stack.base_url, *key, "datasets", "list"],
                                    env={"BACKPROP_API_KEY": None})
        assert result.exit_code == 1, result.output
        assert "401 Unauthorized" in result.output and says in result.output, result.output
        assert "flask --app service keys create --tenant NAME" in result.output
