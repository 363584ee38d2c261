"""Make the README's pictures: the dashboard's job and model pages, and the CLI's --watch bar.

    .venv/bin/python scripts/screenshots.py                  # starts its own service (SQLite, AUTH off)
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8000 --api-key KEY

It uploads two small datasets, trains a job that overfits (and saturates, so a health flag
shows) and shoots its page while it runs, trains a small graph network and shoots its model
page after a prediction, then runs `backprop train ... --watch` in a tmux pane, captures the
pane with its colours (`tmux capture-pane -e -p`), draws that text as a dark terminal page and
shoots it. Needs Debian's chromium (Playwright drives it; no `playwright install`) and tmux.
Writes docs/img/dashboard-job.png, docs/img/dashboard-model.png and docs/img/cli-watch.png.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

from service.core.statuses import TERMINAL_STATUSES, JobStatus

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("BACKPROP_CHROMIUM", "/usr/bin/chromium")


# --- the service ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def own_service(workdir: Path) -> Iterator[str]:
    """Run `make run`'s launcher (API and one worker, SQLite) on a free port; yield its URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    # AUTH off: the pictures show the pages, not the key form.
    env.update(DATA_DIR=str(workdir / "data"), PORT=str(port), AUTH="off", PYTHONPATH=str(ROOT),
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = (workdir / "service.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_embedded.py")], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the service exited {proc.returncode}; see {workdir / 'service.log'}")
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the service was not ready in 90 s; see {workdir / 'service.log'}")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # run_embedded stops the API and the worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class Api:
    """Just enough of the API for this script."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self.url + path, timeout=60, **kwargs)
        if not response.ok:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def upload(self, name: str, header: list[str], rows: list[list[Any]], target: str) -> str:
        text = "\n".join(",".join(str(v) for v in row) for row in [header, *rows]) + "\n"
        return self.call("POST", "/v1/datasets", files={"file": (f"{name}.csv", text, "text/csv")},
                         data={"name": name, "target": target})["id"]

    def job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/v1/jobs", json=body)

    def wait(self, job_id: str, until: Any, timeout: float = 300) -> dict[str, Any]:
        """Poll a job until until(job) is true; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/v1/jobs/{job_id}")
            if until(job):
                return job
            if job["status"] in TERMINAL_STATUSES:
                raise SystemExit(f"job {job_id} ended {job['status']}: {job.get('error')}")
            time.sleep(0.25)
        raise SystemExit(f"job {job_id} took longer than {timeout} s")


# --- data -----------------------------------------------------------------------------------------


def wide_rows(n: int) -> tuple[list[str], list[list[Any]]]:
    """Noise in 40 columns and an alternating label: anything learned is overfitting."""
    rng = np.random.default_rng(0)
    return [f"x{k}" for k in range(40)] + ["label"], [[*np.round(rng.normal(size=40), 3), i % 2] for i in range(n)]


def pets_rows(n: int) -> tuple[list[str], list[list[Any]]]:
    """Cats and dogs by weight and colour."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        dog = i % 2 == 1
        colour = ("brown" if rng.random() < 0.8 else "black") if dog else ("grey" if rng.random() < 0.8 else "black")
        rows.append([round(float(rng.normal(25.0 if dog else 4.0, 4.0)), 2), colour, "dog" if dog else "cat"])
    return ["weight", "colour", "animal"], rows


# A sigmoid layer with std-1 weights on 40 inputs saturates: the saturation flag shows.
SATURATING = {"layers": [{"type": "dense", "units": 24, "activation": "sigmoid", "init": "normal"},
                         {"type": "dense", "units": 12, "activation": "tanh"},
                         {"type": "dense", "units": 2}]}
GRAPH = {"nodes": [
    {"name": "h1", "type": "dense", "units": 16, "activation": "relu", "inputs": ["input"]},
    {"name": "h2", "type": "dense", "units": 16, "activation": "relu", "inputs": ["h1"]},
    {"name": "sum", "type": "add", "inputs": ["h1", "h2"]},
    {"name": "drop", "type": "dropout", "rate": 0.1, "inputs": ["sum"]},
    {"name": "out", "type": "dense", "units": 2, "inputs": ["drop", "input"]},
], "output": "out"}


# --- pictures -------------------------------------------------------------------------------------


def browser_page(playwright: Any, base_url: str, key: str | None, width: int = 1280, height: int = 900) -> Any:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=base_url)
    if key:
        context.add_init_script(f"localStorage.setItem('backprop.apiKey', {json.dumps(key)})")
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


def shoot_job(playwright: Any, api: Api, key: str | None, out: Path) -> None:
    header, rows = wide_rows(240)
    dataset_id = api.upload("noise", header, rows, "label")
    epochs = 2000
    job = api.job({"dataset_id": dataset_id, "network": SATURATING, "time_limit_s": 600,
                   "training": {"epochs": epochs, "batch_size": 4, "optimizer": "sgd", "learning_rate": 0.001,
                                "early_stopping_patience": 0, "seed": 0}})
    try:
        # Far enough in that the validation loss has turned up (overfitting), still running.
        api.wait(job["id"], lambda j: j["progress"]["epoch"] >= 0.6 * epochs)
        page = browser_page(playwright, api.url, key)
        page.goto(f"/ui/jobs/{job['id']}")
        page.wait_for_function("() => window.dashboard.charts.grad && window.dashboard.charts.grad.data[0].length > 0")
        page.locator("#flags li[data-flag]").first.wait_for()
        time.sleep(1)
        page.screenshot(path=str(out), full_page=True)
        page.context.browser.close()
    finally:
        api.call("POST", f"/v1/jobs/{job['id']}/cancel")


def shoot_model(playwright: Any, api: Api, key: str | None, out: Path) -> None:
    header, rows = pets_rows(400)
    dataset_id = api.upload("pets", header, rows, "animal")
    job = api.job({"dataset_id": dataset_id, "network": GRAPH,
                   "training": {"epochs": 30, "learning_rate": 0.01, "seed": 1}})
    job = api.wait(job["id"], lambda j: j["status"] == JobStatus.SUCCEEDED)
    page = browser_page(playwright, api.url, key, height=820)
    page.goto(f"/ui/models/{job['model_id']}")
    page.locator("#graph svg").wait_for()
    page.fill('#predict-form input[name="weight"]', "11.5")
    page.select_option('#predict-form select[name="colour"]', "black")
    page.click('#predict-form button[type="submit"]')
    page.locator("#predicted-label").wait_for()
    page.screenshot(path=str(out), full_page=True)
    page.context.browser.close()


# SGR colours of the 16-colour palette, as a dark terminal draws them.
PALETTE = ["#1e1e1e", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#e5e5e5",
           "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _xterm_colour(n: int) -> str:
    if n < 16:
        return PALETTE[n]
    if n < 232:
        n -= 16
        levels = [0, 95, 135, 175, 215, 255]
        return f"#{levels[n // 36]:02x}{levels[(n // 6) % 6]:02x}{levels[n % 6]:02x}"
    grey = 8 + 10 * (n - 232)
    return f"#{grey:02x}{grey:02x}{grey:02x}"


def ansi_to_html(text: str) -> str:
    """Turn `capture-pane -e` output (SGR escapes) into HTML spans."""
    out: list[str] = []
    style: dict[str, str] = {}
    position = 0
    for match in SGR.finditer(text):
        out.append(_span(text[position:match.start()], style))
        position = match.end()
        codes = [int(c) if c else 0 for c in match.group(1).split(";")]
        k = 0
        while k < len(codes):
            code = codes[k]
            if code == 0:
                style = {}
            elif code == 1:
                style["font-weight"] = "bold"
            elif code == 2:
                style["opacity"] = "0.7"
            elif code == 22:
                style.pop("font-weight", None)
                style.pop("opacity", None)
            elif 30 <= code <= 37 or 90 <= code <= 97:
                style["color"] = PALETTE[code - 30 if code < 90 else code - 82]
            elif 40 <= code <= 47 or 100 <= code <= 107:
                style["background"] = PALETTE[code - 40 if code < 100 else code - 92]
            elif code in (38, 48) and k + 2 < len(codes) and codes[k + 1] == 5:
                style["color" if code == 38 else "background"] = _xterm_colour(codes[k + 2])
                k += 2
            elif code in (38, 48) and k + 4 < len(codes) and codes[k + 1] == 2:
                style["color" if code == 38 else "background"] = "#" + "".join(f"{c:02x}" for c in codes[k + 2:k + 5])
                k += 4
            elif code == 39:
                style.pop("color", None)
            elif code == 49:
                style.pop("background", None)
            k += 1
    out.append(_span(text[position:], style))
    return "".join(out)


def _span(text: str, style: dict[str, str]) -> str:
    if not text:
        return ""
    escaped = html.escape(text)
    if not style:
        return escaped
    return f'<span style="{";".join(f"{k}:{v}" for k, v in style.items())}">{escaped}</span>'


TERMINAL_PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; padding: 24px; background: #d1d5db; }}
.window {{ display: inline-block; border-radius: 10px; overflow: hidden; box-shadow: 0 8px 30px rgba(0,0,0,.35); }}
.title {{ background: #2d2d2d; color: #aaa; font: 13px system-ui, sans-serif; padding: 8px 12px; }}
.title i {{ display: inline-block; width: 12px; height: 12px; border-radius: 50%; margin-right: 6px; }}
pre {{ margin: 0; padding: 14px 18px; background: #1e1e1e; color: #e5e5e5;
       font: 14px/1.35 "DejaVu Sans Mono", ui-monospace, monospace; white-space: pre; }}
</style></head><body><div class="window" id="terminal">
<div class="title"><i style="background:#ff5f56"></i><i style="background:#ffbd2e"></i>
<i style="background:#27c93f"></i>&nbsp;backprop train --watch</div><pre>{body}</pre></div></body></html>"""


def shoot_cli(playwright: Any, api: Api, key: str | None, workdir: Path, out: Path) -> None:
    tmux = shutil.which("tmux")
    if tmux is None:
        raise SystemExit("tmux is not installed (apt-get install tmux)")
    header, rows = pets_rows(4000)
    dataset_id = api.upload("pets-4000", header, rows, "animal")
    network = workdir / "net.json"
    network.write_text(json.dumps(GRAPH))
    epochs = 40
    backprop = str(BIN / "backprop") if (BIN / "backprop").exists() else f"{sys.executable} -m service.client.cli"
    command = (f"backprop train --dataset {dataset_id} --network net.json --epochs {epochs} "
               "--early-stopping-patience 0 --watch")
    socket_name = f"backprop-shots-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TERM": "xterm-256color", "BACKPROP_URL": api.url, "PYTHONPATH": str(ROOT),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if key:
        env["BACKPROP_API_KEY"] = key
    subprocess.run([tmux, "-L", socket_name, "new-session", "-d", "-x", "150", "-y", "7", "-c", str(workdir),
                    "bash --norc --noprofile"], check=True, env=env)
    try:
        # The alias keeps the shown command short: `backprop` is the installed console script.
        prompt = r"\[\e[1;32m\]you@laptop\[\e[0m\]:\[\e[1;34m\]~/demo\[\e[0m\]$ "
        subprocess.run([tmux, "-L", socket_name, "send-keys",
                        f"PS1={shlex.quote(prompt)}; alias backprop={shlex.quote(backprop)}; clear", "Enter"],
                       check=True)
        time.sleep(0.5)
        subprocess.run([tmux, "-L", socket_name, "send-keys", command, "Enter"], check=True)
        # The whole run: the bar as it ended, the final metrics and the model.
        deadline = time.monotonic() + 180
        text = ""
        while time.monotonic() < deadline:
            text = subprocess.run([tmux, "-L", socket_name, "capture-pane", "-e", "-p"], check=True,
                                  capture_output=True, text=True).stdout
            if "succeeded; model" in text:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"the watched job did not succeed in 180 s:\n{text}")
    finally:
        subprocess.run([tmux, "-L", socket_name, "kill-server"], capture_output=True)
    lines = text.rstrip("\n").split("\n")
    while lines and not SGR.sub("", lines[-1]).strip():
        lines.pop()
    page_file = workdir / "terminal.html"
    page_file.write_text(TERMINAL_PAGE.format(body=ansi_to_html("\n".join(lines))))
    page = browser_page(playwright, api.url, None, width=1500, height=400)
    page.goto(page_file.as_uri())
    page.locator("#terminal").screenshot(path=str(out))
    page.context.browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: start one on SQLite)")
    parser.add_argument("--api-key", default=os.environ.get("BACKPROP_API_KEY"),
                        help="its API key, when it runs with AUTH on (env BACKPROP_API_KEY)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go")
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"chromium is not at {CHROMIUM} (apt-get install chromium, or set BACKPROP_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backprop-shots-") as tmp:
        workdir = Path(tmp)

        def shoot(url: str) -> None:
            api = Api(url, args.api_key)
            with sync_playwright() as playwright:
                shoot_model(playwright, api, args.api_key, args.out / "dashboard-model.png")
                shoot_job(playwright, api, args.api_key, args.out / "dashboard-job.png")
                shoot_cli(playwright, api, args.api_key, workdir, args.out / "cli-watch.png")

        if args.url:
            shoot(args.url)
        else:
            with own_service(workdir) as url:
                shoot(url)
    for name in ("dashboard-job.png", "dashboard-model.png", "cli-watch.png"):
        path = args.out / name
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
