"""Run an evaluation job: score a stored dataset with a model and store the report (docs/service.md, "Evaluations").

An evaluation is a job row of kind `evaluate` (service.core.statuses.JobKind), run in
the frame of workers/scoring.py: claimed and leased like a training job, its heartbeat
renewed between the report's passes over the rows, its report written with its
success in one transaction that holds the lease. A worker that dies mid-way leaves
nothing behind; the reaper re-queues the job and the next attempt scores from the start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.core.evaluation.report import EvaluationError, evaluate_table
from service.core.networks import eval_rows_per_pass
from workers.lease import JobSettings, Publish
from workers.scoring import ScoringDataError, ScoringJob, run_scoring_job


def _evaluate(scoring: ScoringJob) -> None:
    """Compute the report in passes within the activation budget, then end the job succeeded with it."""
    options: dict[str, Any] = scoring.options  # as service/api/evaluations.py stored them
    # As the training worker's validation passes: the budget of values one forward pass may hold.
    per_pass = eval_rows_per_pass(scoring.network.activation_width, scoring.recorder.settings.max_activation_floats)
    try:
        report = evaluate_table(scoring.network, scoring.preprocessor, scoring.model.loss, scoring.table,
                                permutation_repeats=int(options["permutation_repeats"]),
                                seed=int(options["seed"]), max_rows_per_pass=per_pass,
                                on_progress=scoring.check)
    except EvaluationError as error:
        # The dataset cannot be scored (no row with a target the model knows, a column that
        # changed kind): the user's to fix, so the job fails saying why rather than as a bug.
        raise ScoringDataError(f"dataset {scoring.dataset.id} cannot be evaluated with model "
                               f"{scoring.model.id}: {error}") from None
    scoring.succeed(report)


def run_evaluation(job_id: str, sessions: sessionmaker[Session] | None = None, owner: str | None = None,
                   settings: JobSettings | None = None, shutdown: Callable[[], bool] | None = None,
                   publish: Publish | None = None) -> str:
    """Run the evaluation job with this id; return its status as this worker left it.

    Parameters
    ----------
    job_id
        An `ev_…` job (kind `evaluate`).
    sessions, owner, settings, shutdown, publish
        As workers.training.run_job: the database, this worker's lease name, the recovery
        settings, whether the worker is stopping (the job is then handed back), and how a
        handed-back job is published again.
    """
    return run_scoring_job(job_id, _evaluate, sessions=sessions, owner=owner, settings=settings,
                           shutdown=shutdown, publish=publish)
