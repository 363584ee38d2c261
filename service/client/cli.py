"""The `backprop` command: the REST API from a shell, with live progress bars.

Built on service.client (plain HTTP); docs/cli.md describes every command.
Exit codes: 0 done, 1 an API or connection error, 2 a usage error, 3 the job
(evaluation, batch prediction) failed, 4 it was cancelled, 130 interrupted while watching.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
import requests

from service.client.client import BATCH_PREDICTION_FORMATS, DEFAULT_URL, JOB_STATUSES, TERMINAL, ApiError, Client

EXIT_ERROR, EXIT_FAILED, EXIT_CANCELLED, EXIT_INTERRUPTED = 1, 3, 4, 130
PREDICT_CHUNK_ROWS = 10_000

# What the last line of a watch shows, of the job's final metrics (the best epoch's).
FINAL_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "epoch", "epochs_run", "stopped_early")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print `message` on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class ApiGroup(click.Group):
    """A group whose commands turn API and connection errors into readable messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as error:
            if error.status == 401:
                key = ctx.find_root().params.get("api_key")
                fail(f"{error.message()}\n" + (
                    "the API key was refused: check --api-key or BACKPROP_API_KEY" if key else
                    "the service wants an API key: pass --api-key KEY or set BACKPROP_API_KEY") +
                    " (an operator creates one with `flask --app service keys create --tenant NAME`)")
            fail(error.message())
        except requests.ConnectionError:
            fail(f"cannot reach the service at {ctx.find_root().params.get('url')}; is it running? "
                 f"(set --url or BACKPROP_URL)")
        except requests.RequestException as error:
            fail(f"the request failed: {error}")


def api(ctx: click.Context) -> Client:
    return ctx.find_root().obj


@click.group(cls=ApiGroup)
@click.option("--url", envvar="BACKPROP_URL", default=DEFAULT_URL, show_default=True,
              help="Base URL of the service (env BACKPROP_URL).")
@click.option("--api-key", envvar="BACKPROP_API_KEY", default=None,
              help="Sent as 'Authorization: Bearer KEY' (env BACKPROP_API_KEY).")
@click.version_option(package_name="backprop-service", message="backprop %(version)s")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """Train neural networks on a backprop-service and use the models."""
    ctx.obj = Client(url, api_key=api_key)


# --- output helpers --------------------------------------------------------------------------------


def table(rows: list[list[Any]], header: list[str]) -> None:
    """Print rows as left-aligned columns."""
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def read_json_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    except ValueError as error:
        fail(f"{path} is not valid JSON: {error}")


# --- datasets --------------------------------------------------------------------------------------


@main.group()
def datasets() -> None:
    """Upload and list datasets."""


@datasets.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", help="Target column(s), comma-separated; default the last column.")
@click.option("--name", help="Dataset name; default the file name.")
@click.option("--task", type=click.Choice(["classification", "regression"]), help="Inferred when absent.")
@click.option("--format", "table_format", type=click.Choice(["csv", "json", "jsonl", "parquet"]),
              help="The file's format; default from its extension, else its content.")
@click.option("--na-values", help="Comma-separated CSV tokens meaning a missing cell (replacing pandas' "
                                  "defaults: NA, N/A, NaN, null, ...); the empty cell always is.")
@click.pass_context
def datasets_upload(ctx: click.Context, file: str, target: str | None, name: str | None,
                    task: str | None, table_format: str | None, na_values: str | None) -> None:
    """Upload a table: CSV (header row first), JSON (records), JSON Lines or Parquet."""
    tokens = None if na_values is None else na_values.split(",")
    dataset = api(ctx).upload_dataset(file, target=target, name=name, task=task, format=table_format,
                                      na_values=tokens)
    classes = f", classes {dataset['classes']}" if dataset.get("classes") else ""
    click.echo(f"{dataset['id']}  {dataset['name']}: {dataset['n_rows']} rows, {dataset['task']} of "
               f"{', '.join(dataset['targets'])} from {len(dataset['features'])} features{classes}")
    for warning in dataset.get("warnings", []):
        click.echo(f"  note: {warning}")


@datasets.command("list")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many.")
@click.pass_context
def datasets_list(ctx: click.Context, limit: int | None) -> None:
    """List datasets, newest first."""
    rows = [[d["id"], d["name"], d["n_rows"], d["task"], ",".join(d["targets"]), d["created_at"]]
            for d in api(ctx).list_datasets(limit)]
    table(rows, ["ID", "NAME", "ROWS", "TASK", "TARGET", "CREATED"])


# --- networks --------------------------------------------------------------------------------------


@main.group()
def networks() -> None:
    """Check network definitions."""


@networks.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--input-dim", type=click.IntRange(1), help="Input width, to count parameters.")
@click.option("--dataset", "dataset_id", help="Take the input width from this dataset.")
@click.pass_context
def networks_validate(ctx: click.Context, file: str, input_dim: int | None, dataset_id: str | None) -> None:
    """Check a network definition (JSON file) and list every problem."""
    result = api(ctx).validate_network(read_json_file(file), input_dim=input_dim, dataset_id=dataset_id)
    if not result["valid"]:
        click.echo(f"{file}: invalid", err=True)
        for problem in result["problems"]:
            node = f" (node {problem['node']})" if problem.get("node") else ""
            click.echo(f"  {problem.get('field') or '(definition)'}{node}: {problem['message']}", err=True)
        sys.exit(EXIT_ERROR)
    count = result.get("parameter_count")
    click.echo(f"{file}: valid" + (f", {count:,} parameters for input width {result['input_dim']}"
                                   if count is not None else ""))


# --- training --------------------------------------------------------------------------------------


@main.command()
@click.option("--dataset", "dataset_id", required=True, help="Dataset id.")
@click.option("--network", help="Network definition (JSON file) or a stored network's id "
                                "(default with --init-from-model: the model's network).")
@click.option("--init-from-model", help="Warm start: begin from this model's weights and preprocessing.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True),
              help="Seconds the job may run (from its first start) before it ends failed.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--optimizer", type=str, help="sgd, momentum, adam, ... (see docs/engine.md).")
@click.option("--learning-rate", type=float)
@click.option("--loss", type=click.Choice(["mse", "cross_entropy", "binary_cross_entropy"]))
@click.option("--validation-split", type=float)
@click.option("--early-stopping-patience", type=int)
@click.option("--weight-decay", type=float)
@click.option("--class-weight", help="balanced, or a JSON object of label: weight.")
@click.option("--test-split", type=float, help="Fraction of the rows held out for the model's metrics.test.")
@click.option("--test-permutation-repeats", type=int,
              help="Shuffles per feature column for metrics.test's permutation importance (0: none).")
@click.option("--seed", type=int)
@click.option("--features", help="Comma-separated columns to use (default: the dataset's features).")
@click.option("--ignored-columns", help="Comma-separated columns to leave out of the dataset's features.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--watch", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--poll", type=click.FloatRange(0.05), default=0.5, show_default=True,
              help="Seconds between polls while watching.")
@click.pass_context
def train(ctx: click.Context, dataset_id: str, network: str | None, init_from_model: str | None,
          time_limit: float | None, device: str, watch: bool, poll: float, features: str | None,
          ignored_columns: str | None, class_weight: str | None, **training: Any) -> None:
    """Start a training job (and watch it with --watch)."""
    settings = {k: v for k, v in training.items() if v is not None}
    if class_weight is not None:
        settings["class_weight"] = class_weight if class_weight == "balanced" else _json_option(
            "--class-weight", class_weight)
    client = api(ctx)
    options: dict[str, Any] = {"training": settings, "device": device, "init_from_model": init_from_model,
                               "time_limit_s": time_limit, "features": _names(features),
                               "ignored_columns": _names(ignored_columns)}
    if network is None:
        if init_from_model is None:
            raise click.UsageError("give --network, or --init-from-model to continue a model with its network")
        job = client.create_job(dataset_id, **options)
    elif Path(network).is_file() or network.endswith(".json"):
        job = client.create_job(dataset_id, read_json_file(network), **options)
    else:
        job = client.create_job(dataset_id, network_id=network, **options)
    click.echo(f"job {job['id']} {job['status']}")
    if watch:
        watch_job(client, job["id"], poll)
    else:
        click.echo(f"follow it with: backprop jobs watch {job['id']}")


def _names(option: str | None) -> list[str] | None:
    """Split a comma-separated option into column names (None when not given)."""
    return None if option is None else [name.strip() for name in option.split(",") if name.strip()]


def _json_option(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint=flag) from None


# --- jobs ------------------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """List, show, cancel and watch training jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice(JOB_STATUSES))
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_context
def jobs_list(ctx: click.Context, status: str | None, limit: int) -> None:
    """List jobs, newest first."""
    rows = []
    for job in api(ctx).list_jobs(status=status, limit=limit):
        progress = job["progress"]
        loss = (job.get("metrics") or {}).get("loss")
        rows.append([job["id"], job["status"], f"{progress['epoch'] or 0}/{progress['epochs']}",
                     number(loss), job["dataset_id"], job.get("model_id") or ""])
    table(rows, ["ID", "STATUS", "EPOCH", "LOSS", "DATASET", "MODEL"])


@jobs.command("show")
@click.argument("job_id")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str) -> None:
    """Print a job as JSON."""
    click.echo(json.dumps(api(ctx).get_job(job_id), indent=2))


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    job = api(ctx).cancel_job(job_id)
    click.echo(f"job {job['id']} {job['status']}" + (" (stopping)" if job["status"] == "running" else ""))


@jobs.command("watch")
@click.argument("job_id")
@click.option("--poll", type=click.FloatRange(0.05), default=0.5, show_default=True,
              help="Seconds between polls.")
@click.pass_context
def jobs_watch(ctx: click.Context, job_id: str, poll: float) -> None:
    """Follow a job with a progress bar until it ends."""
    watch_job(api(ctx), job_id, poll)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Watcher:
    """Draw a job's progress: a redrawn bar on a terminal, one line per epoch otherwise."""

    def __init__(self, client: Client, job: dict[str, Any], out: TextIO) -> None:
        self.client = client
        self.job_id = job["id"]
        self.out = out
        self.interactive = out.isatty()
        self.epochs = int(job["progress"]["epochs"] or 0)
        self.shown_epoch = 0
        self.flags_seen: set[str] = set()
        self.bar: Any = None
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=self.epochs, file=out, unit="epoch", dynamic_ncols=True, mininterval=0,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}")
            self.bar.set_description_str(self.job_id)

    def elapsed(self, job: dict[str, Any]) -> float | None:
        started = _parse_time(job.get("started_at"))
        if started is None:
            return None
        finished = _parse_time(job.get("finished_at"))
        return max(0.0, (finished or time.time()) - started)

    def summary(self, job: dict[str, Any], epoch: int, metrics: dict[str, Any]) -> str:
        elapsed = self.elapsed(job)
        eta = elapsed / epoch * (self.epochs - epoch) if elapsed is not None and epoch else None
        parts = [f"loss {number(metrics.get('loss'))}", f"val_loss {number(metrics.get('val_loss'))}"]
        if "val_accuracy" in metrics:
            parts.append(f"val_acc {number(metrics['val_accuracy'])}")
        parts += [f"elapsed {duration(elapsed)}", f"eta {duration(eta)}"]
        return "  ".join(parts)

    def update(self, job: dict[str, Any]) -> None:
        epoch = int(job["progress"]["epoch"] or 0)
        metrics = job.get("metrics") or {}
        if self.interactive:
            self.bar.n = epoch
            flags = metrics.get("flags") or []
            warning = f"  [! {', '.join(flags)}]" if flags else ""
            status = "" if job["status"] == "running" else f"{job['status']}  "
            self.bar.set_postfix_str(status + self.summary(job, epoch, metrics) + warning, refresh=False)
            self.bar.refresh()
            if epoch > self.shown_epoch:
                self.shown_epoch = epoch
                self.warn(metrics.get("flags") or [], metrics)  # the latest epoch's record, less its layers
        elif epoch > self.shown_epoch:
            # Several epochs may end between two polls: the history has each of them.
            records = self.client.job_metrics(self.job_id, after_epoch=self.shown_epoch)["epochs"]
            for record in records:
                if self.shown_epoch < record["epoch"] <= epoch:
                    self.line(f"epoch {record['epoch']}/{self.epochs}  "
                              f"{self.summary(job, record['epoch'], record)}")
                    self.warn(record.get("flags") or [], record)
            self.shown_epoch = epoch

    def warn(self, flags: list[str], record: dict[str, Any]) -> None:
        """Explain each flag the first time it appears, naming the layers that raised it in `record`.

        The engine's epoch record says both (`flag_details`: for each flag its layers and its
        explanation), so nothing here knows the thresholds or the sentences.
        """
        new = [flag for flag in flags if flag not in self.flags_seen]
        if not new:
            return
        self.flags_seen.update(new)
        details: dict[str, dict[str, Any]] = record.get("flag_details") or {}
        for flag in new:
            detail = details.get(flag) or {}
            where = f" ({', '.join(detail['layers'])})" if detail.get("layers") else ""
            self.line(f"warning: {flag}{where}: {detail.get('explanation') or ''}".rstrip(": "))

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)  # above the bar, which stays the last line
        else:
            click.echo(text, file=self.out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def watch_job(client: Client, job_id: str, poll: float) -> None:
    """Follow a job until it ends; exit non-zero unless it succeeded."""
    job = client.get_job(job_id)
    watcher = Watcher(client, job, sys.stdout)
    try:
        while True:
            watcher.update(job)
            if job["status"] in TERMINAL:
                break
            time.sleep(poll)
            job = client.get_job(job_id)
    except KeyboardInterrupt:
        watcher.close()
        click.echo(f"stopped watching; the job goes on (backprop jobs cancel {job_id} stops it)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    watcher.close()
    metrics = job.get("metrics") or {}
    if job["status"] == "succeeded":
        shown = [(k, metrics[k]) for k in FINAL_METRICS if metrics.get(k) is not None]
        click.echo("final metrics: " + "  ".join(f"{k} {number(v)}" for k, v in shown))
        click.echo(f"job {job_id} succeeded; model {job['model_id']}")
        return
    if job["status"] == "failed":
        fail(f"job {job_id} failed: {job.get('error') or 'no reason given'}", EXIT_FAILED)
    fail(f"job {job_id} was cancelled at epoch {job['progress']['epoch'] or 0}", EXIT_CANCELLED)


# --- models ----------------------------------------------------------------------------------------


@main.command()
@click.argument("model_id")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV of raw rows with a header naming the feature columns.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="Write the CSV here; default stdout.")
@click.pass_context
def predict(ctx: click.Context, model_id: str, input_path: str, output_path: str | None) -> None:
    """Score a CSV of raw rows; write it back with prediction (and probability) columns."""
    client = api(ctx)
    model = client.get_model(model_id)
    with open(input_path, newline="") as file:
        reader = csv.DictReader(file)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not rows:
        fail(f"{input_path} has no rows")
    features = model["features"]
    missing = [name for name in features if name not in header]
    if missing:
        fail(f"{input_path} lacks the feature column(s) {', '.join(missing)}; the model takes "
             f"{', '.join(features)}")
    targets = model["targets"]
    added = [f"predicted_{t}" for t in targets]
    if model["task"] == "classification":
        added += [f"p_{c}" for c in model["classes"]]
    out = open(output_path, "w", newline="") if output_path else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(header + added)
        for start in range(0, len(rows), PREDICT_CHUNK_ROWS):
            chunk = rows[start:start + PREDICT_CHUNK_ROWS]
            try:
                result = client.predict(model_id, inputs=[[row[name] for name in features] for row in chunk])
            except ApiError as error:
                # Field paths are relative to the chunk; name the CSV's line instead.
                for entry in error.errors:
                    entry["field"] = _csv_position(entry.get("field", ""), start, features)
                raise ApiError(error.status, error.title, error.detail, error.errors) from None
            for k, row in enumerate(chunk):
                prediction = result["predictions"][k]
                values = prediction if isinstance(prediction, list) else [prediction]
                if model["task"] == "classification":
                    values = values + result["probabilities"][k]
                writer.writerow([row.get(name, "") for name in header] + values)
    finally:
        if output_path:
            out.close()
    if output_path:
        click.echo(f"wrote {len(rows)} predictions to {output_path}", err=True)


def _csv_position(field: str, offset: int, features: list[str]) -> str:
    """Turn 'inputs[3][1]' into 'line 5, column colour' of the uploaded CSV (header is line 1)."""
    import re

    match = re.fullmatch(r"inputs\[(\d+)\](?:\[(\d+)\])?", field)
    if not match:
        return field
    where = f"line {offset + int(match.group(1)) + 2}"
    if match.group(2) is not None and int(match.group(2)) < len(features):
        where += f", column {features[int(match.group(2))]}"
    return where


@main.group()
def models() -> None:
    """List and export trained models."""


@models.command("list")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_context
def models_list(ctx: click.Context, limit: int) -> None:
    """List trained models, newest first."""
    rows = []
    for model in api(ctx).list_models(limit):
        metrics = model.get("metrics") or {}
        rows.append([model["id"], model["task"], ",".join(model["targets"]), number(metrics.get("val_loss")),
                     model["job_id"], model["created_at"]])
    table(rows, ["ID", "TASK", "TARGET", "VAL_LOSS", "JOB", "CREATED"])


@models.command("export")
@click.argument("model_id")
@click.option("--format", "format_", type=click.Choice(["onnx", "npz"]), default="onnx", show_default=True)
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="File to write.")
@click.pass_context
def models_export(ctx: click.Context, model_id: str, format_: str, output_path: str) -> None:
    """Download a model as ONNX (preprocessing included) or as a backprop .npz."""
    data = api(ctx).export_model(model_id, format_)
    Path(output_path).write_bytes(data)
    click.echo(f"wrote {output_path} ({len(data):,} bytes, {format_})")


# The batch prediction format each file extension means (lower case), when --format is not given.
BATCH_PREDICTION_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
assert set(BATCH_PREDICTION_SUFFIXES.values()) == set(BATCH_PREDICTION_FORMATS)


def batch_prediction_format(output_path: str, given: str | None) -> str:
    """Return the format to ask for: --format, else the one -o's extension names, else the server's default.

    A --format that another known extension contradicts (`--format csv -o out.parquet`) is a
    usage error: the file would not hold what its name says.
    """
    suffix = Path(output_path).suffix.lower()
    implied = BATCH_PREDICTION_SUFFIXES.get(suffix)
    if given is None:
        return implied or BATCH_PREDICTION_FORMATS[0]
    if implied is not None and implied != given:
        raise click.UsageError(f"--format {given} does not match the extension of {output_path} ({suffix} is "
                               f"{implied}); give one of them, or make them agree")
    return given


@models.command("predict-batch")
@click.argument("model_id")
@click.option("--dataset", "dataset_id", required=True,
              help="A stored dataset with the model's feature columns (matched by name).")
@click.option("--format", "format_", type=click.Choice(BATCH_PREDICTION_FORMATS), default=None,
              help="The file written; default from the extension of -o (.csv, .parquet, .pq), else "
                   f"{BATCH_PREDICTION_FORMATS[0]}.")
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="File to write: the dataset's rows, then the prediction and each class's probability.")
@click.option("--poll", type=click.FloatRange(0.05), default=0.5, show_default=True,
              help="Seconds between polls.")
@click.pass_context
def models_predict_batch(ctx: click.Context, model_id: str, dataset_id: str, format_: str | None,
                         output_path: str, poll: float) -> None:
    """Predict every row of a stored dataset (on the workers); wait for it and download the file."""
    format_ = batch_prediction_format(output_path, format_)  # before anything is asked of the service
    client = api(ctx)
    state = client.create_batch_prediction(model_id, dataset_id, format_)
    batch_id = state["id"]
    state = _until_succeeded("batch prediction", batch_id, state, lambda on_update: client.wait_batch_prediction(
        batch_id, poll_s=poll, on_update=on_update), f"GET /v1/batch-predictions/{batch_id}")
    size = client.download_batch_prediction(batch_id, output_path)
    click.echo(f"wrote {output_path} ({state['n_rows']:,} rows, {size:,} bytes, {format_})")


@models.command("evaluate")
@click.argument("model_id")
@click.option("--dataset", "dataset_id", required=True,
              help="A stored dataset with the model's feature and target columns (matched by name).")
@click.option("--permutation-repeats", type=click.IntRange(0), default=None,
              help="Shuffles of each feature column for permutation importance; 0 leaves it out "
                   "(default: the service's).")
@click.option("--seed", type=click.IntRange(0), default=None, help="Seed of the shuffles.")
@click.option("--poll", type=click.FloatRange(0.05), default=0.5, show_default=True,
              help="Seconds between polls.")
@click.pass_context
def models_evaluate(ctx: click.Context, model_id: str, dataset_id: str, permutation_repeats: int | None,
                    seed: int | None, poll: float) -> None:
    """Evaluate a model on a stored dataset (on the workers); wait for it and print the report."""
    client = api(ctx)
    evaluation = client.create_evaluation(model_id, dataset_id, permutation_repeats=permutation_repeats, seed=seed)
    evaluation_id = evaluation["id"]
    evaluation = _until_succeeded("evaluation", evaluation_id, evaluation, lambda on_update: client.wait_evaluation(
        evaluation_id, poll_s=poll, on_update=on_update), f"backprop models evaluation {evaluation_id}")
    print_report(evaluation["report"])


def _until_succeeded(kind: str, resource_id: str, state: dict[str, Any],
                     wait: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]], follow: str) -> dict[str, Any]:
    """Print each status the `kind` takes while `wait(on_update)` polls it; return it once it succeeded.

    A failure or a cancellation exits (EXIT_FAILED, EXIT_CANCELLED); Ctrl-C stops waiting
    (EXIT_INTERRUPTED) and says how to `follow` it, as it goes on.
    """
    what = f"{kind} {resource_id}"
    click.echo(f"{what} {state['status']}")
    shown = [state["status"]]

    def on_update(update: dict[str, Any]) -> None:
        if update["status"] != shown[-1]:
            shown.append(update["status"])
            click.echo(f"{what} {update['status']}")

    try:
        state = wait(on_update)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; the {kind} goes on ({follow})", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if state["status"] == "failed":
        fail(f"{what} failed: {state.get('error') or 'no reason given'}", EXIT_FAILED)
    if state["status"] != "succeeded":
        fail(f"{what} was {state['status']}", EXIT_CANCELLED)
    return state


@models.command("evaluation")
@click.argument("evaluation_id")
@click.pass_context
def models_evaluation(ctx: click.Context, evaluation_id: str) -> None:
    """Print an evaluation: its status, then its report once it succeeded."""
    evaluation = api(ctx).get_evaluation(evaluation_id)
    click.echo(f"evaluation {evaluation_id} of model {evaluation['model_id']} on dataset "
               f"{evaluation['dataset_id']}: {evaluation['status']}")
    if evaluation["status"] == "failed":
        fail(f"evaluation {evaluation_id} failed: {evaluation.get('error') or 'no reason given'}", EXIT_FAILED)
    if evaluation.get("report"):
        print_report(evaluation["report"])


def print_report(report: dict[str, Any]) -> None:
    """Print an evaluation report (docs/service.md, "Evaluations") as tables."""
    skipped = [f"{report.get('n_rows_without_target') or 0:,} without a target"]
    if report.get("n_rows_unknown_label"):
        skipped.append(f"{report['n_rows_unknown_label']:,} with a label the model does not know")
    click.echo(f"{report['task']}: {report['n_rows']:,} rows scored ({', '.join(skipped)} left out)")
    click.echo()
    if report["task"] == "classification":
        table([[name, number(value)] for name, value in report["metrics"].items()], ["METRIC", "VALUE"])
        confusion = report["confusion_matrix"]
        labels = [str(label) for label in confusion["labels"]]
        click.echo("\nconfusion matrix (rows: true label, columns: predicted)")
        table([[label, *row] for label, row in zip(labels, confusion["matrix"])], ["TRUE", *labels])
        click.echo()
        table([[c["label"], number(c["precision"]), number(c["recall"]), number(c["f1"]), c["support"]]
               for c in report["per_class"]], ["LABEL", "PRECISION", "RECALL", "F1", "SUPPORT"])
    else:
        quantiles = ("0.05", "0.5", "0.95")  # of the residuals (actual - predicted), in the target's units
        table([[t["target"], number(t["rmse"]), number(t["mae"]), number(t["r2"]),
                *(number(t["residual_quantiles"].get(q)) for q in quantiles)] for t in report["per_target"]],
              ["TARGET", "RMSE", "MAE", "R2", *(f"RESIDUAL {float(q):.0%}" for q in quantiles)])
    importance = report.get("permutation_importance")
    if importance:
        metric = report.get("importance_metric") or "the main metric"
        click.echo(f"\npermutation importance (drop in {metric} when the column is shuffled)")
        ranked = sorted(importance, key=lambda f: -math.inf if f["mean"] is None else f["mean"], reverse=True)
        table([[f["feature"], number(f["mean"]), number(f["std"])] for f in ranked], ["FEATURE", "MEAN", "STD"])


if __name__ == "__main__":
    main()
