"""The Python client and the `backprop` command: plain HTTP (requests, click).

Importing it loads nothing else of the service (no numpy, no Flask), so it works
from a notebook or a script on any machine that can reach the API.
"""

from service.client.client import BATCH_PREDICTION_FORMATS, DEFAULT_URL, JOB_STATUSES, TERMINAL, ApiError, Client

__all__ = ["BATCH_PREDICTION_FORMATS", "DEFAULT_URL", "JOB_STATUSES", "TERMINAL", "ApiError", "Client"]
