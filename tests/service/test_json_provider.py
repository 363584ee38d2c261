"""The API's JSON provider: orjson's speed with the json module's answers."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest


@pytest.fixture
def provider(app):
    return app.json


@pytest.mark.parametrize("text", [
    '{"inputs": [[1.5, -2, 3e-8, 1e16], [0.1, 7, 0, -0.0]]}',
    '{"name": "caf\\u00e9 \u00e9t\u00e9", "nested": {"a": [true, false, null]}}',
    '{"a": 1, "a": 2}',                 # the last duplicate wins in both
    '["\\ud800"]',                      # a lone surrogate: orjson refuses, json takes it
    '[NaN, Infinity, -Infinity, 1e400]',  # orjson refuses these; json reads them as before
])
def test_loads_gives_the_json_modules_answer(provider, text):
    for given in (text, text.encode("utf-8")):
        ours, theirs = provider.loads(given), json.loads(given)
        assert json.dumps(ours) == json.dumps(theirs)  # NaN-safe equality, types included


def test_a_body_with_a_byte_order_mark_is_read_as_before(provider):
    given = '\ufeff{"bom": true}'.encode("utf-8")  # orjson refuses it; json reads bytes with one
    assert provider.loads(given) == json.loads(given) == {"bom": True}


@pytest.mark.parametrize("text", ['{"a": 1,}', "[1, 2", "{'a': 1}", ""])
def test_bad_json_gets_the_json_modules_error(provider, text):
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as ours:
        provider.loads(text)
    assert str(ours.value) == str(theirs.value)


def test_a_body_the_json_module_would_refuse_is_a_400_naming_the_place(client):
    response = client.post("/v1/jobs", data='{"dataset_id": "x",}', content_type="application/json")
    assert response.status_code == 400
    assert "not valid JSON: Expecting property name enclosed in double quotes" in response.get_json()["detail"]


@pytest.mark.parametrize("value", [
    {"predictions": [1, 2], "probabilities": [[0.25, 0.75], [0.3333333432674408, 1e-300]], "classes": ["a", "b"]},
    {"unicode": "caf\u00e9 \u2603", "empty": {}, "none": None, "big": 2 ** 63 - 1},
])
def test_compact_dumps_are_the_json_modules_bytes(provider, value):
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert provider.dumps(value, separators=(",", ":")) == expected


def test_what_orjson_writes_differently_goes_to_the_json_module(provider):
    when = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert provider.dumps({"at": when}, separators=(",", ":")) == '{"at":"Sun, 29 Nov 2026 03:00:00 GMT"}'
    assert provider.dumps({1: "a"}, separators=(",", ":")) == '{"1":"a"}'  # keys that are not strings
    assert provider.dumps([2 ** 70], separators=(",", ":")) == f"[{2 ** 70}]"  # beyond 64 bits
    assert provider.dumps({"a": 1}, indent=2) == '{\n  "a": 1\n}'  # debug mode's indented answers
    # A lone surrogate (the json module reads one in a body): escaped, so the answer encodes as UTF-8.
    assert provider.dumps({"name": "\ud800"}, separators=(",", ":")) == '{"name":"\\ud800"}'


def test_non_finite_floats_are_written_as_null(provider):
    assert provider.dumps([math.nan, math.inf, 1.0], separators=(",", ":")) == "[null,null,1.0]"


def test_answers_keep_their_key_order(client):
    body = client.get("/v1/jobs").get_data(as_text=True)
    assert body.index('"items"') < body.index('"next_cursor"')
