"""The client's own spelling of what the API answers agrees with the server's.

service.client is a distributable of its own that imports nothing of the server
(tests/test_layers.py), so the few facts of the API it needs before any request
(the job statuses: choices of `--status`, when a wait is over) are spelled there;
these tests pin them to the server's one source.
"""

from __future__ import annotations

from service.client import JOB_STATUSES, TERMINAL
from service.core.statuses import TERMINAL_STATUSES, JobStatus


def test_the_client_knows_every_job_status_in_the_servers_order():
    assert JOB_STATUSES == tuple(JobStatus)


def test_the_client_stops_waiting_at_the_servers_terminal_statuses():
    assert set(TERMINAL) == TERMINAL_STATUSES and len(TERMINAL) == len(TERMINAL_STATUSES)
