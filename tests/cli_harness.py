"""Run the real `backprop` CLI and Client against a Flask test app: requests routed into its test client."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from click.testing import CliRunner
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict


class FlaskAdapter(BaseAdapter):
    """Answer requests' requests with a Flask test client (streamed reads too: iter_content)."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url)
        answer = self.client.open(url.path, method=request.method, query_string=url.query,
                                  data=request.body, headers=dict(request.headers))
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.status.partition(" ")[2]
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.get_data()
        response._content_consumed = True  # the body is read: iter_content slices it, close() has no socket
        response.raw = io.BytesIO()
        response.url, response.request = request.url, request
        return response

    def close(self) -> None:
        pass


def cli_runner(client: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str]]:
    """Return `run(*args) -> (exit code, output)`: `backprop ARGS...` against the test app."""
    from service.client import Client, cli

    def make(url: str, api_key: str | None = None) -> Client:
        session = requests.Session()
        session.mount("http://", FlaskAdapter(client))
        return Client(url, api_key=api_key, session=session)

    monkeypatch.setattr(cli, "Client", make)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli.main, ["--url", "http://testserver", *args])
        return result.exit_code, result.output

    return run
