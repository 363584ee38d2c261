"""The client's own spelling of what the API answers agrees with the server's.

service.client is a distributable of its own that imports nothing of the server
(tests/test_layers.py), so the few facts of the API it needs before any request
(the job statuses: choices of `--status`, when a wait is over; the batch prediction
formats: choices of `predict-batch --format`, the default) are spelled there;
these tests pin them to the server's one source.
"""

from __future__ import annotations

from service.client import BATCH_PREDICTION_FORMATS, JOB_STATUSES, TERMINAL
from service.core.schemas import BATCH_PREDICTION_FORMATS as SERVER_BATCH_PREDICTION_FORMATS
from service.core.schemas import BatchPredictionCreate
from service.core.statuses import TERMINAL_STATUSES, JobStatus


def test_the_client_knows_every_job_status_in_the_servers_order():
    assert JOB_STATUSES == tuple(JobStatus)


def test_the_client_stops_waiting_at_the_servers_terminal_statuses():
    assert set(TERMINAL) == TERMINAL_STATUSES and len(TERMINAL) == len(TERMINAL_STATUSES)


def test_the_client_knows_the_servers_batch_prediction_formats_and_default():
    assert BATCH_PREDICTION_FORMATS == SERVER_BATCH_PREDICTION_FORMATS
    assert BATCH_PREDICTION_FORMATS[0] == BatchPredictionCreate.model_fields["format"].default
