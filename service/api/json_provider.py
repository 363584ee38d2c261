"""The API's JSON: orjson where it gives the json module's answer, the json module everywhere else."""

from __future__ import annotations

from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

# Dates and dataclasses go to Flask's `default`, as with the json module (orjson would
# write dates in ISO 8601, Flask writes HTTP dates).
DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
COMPACT = (",", ":")
# orjson's limit on nested arrays and objects; the json module's recursion stops near Python's
# recursion limit (1,000) and raises RecursionError, which is no ValueError.
MAX_JSON_DEPTH = 1024


class JSONTooDeep(ValueError):
    """A body nests arrays and objects deeper than the parsers go: a 400, not a RecursionError."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_JSON_DEPTH:,} levels of arrays and objects")


class ServiceJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, parsing and writing with orjson.

    A 10,000-row predict spent ~35 ms parsing its body and ~35 ms writing its
    answer with the json module; orjson takes a fifth and a fifteenth of that
    (docs/performance.md). The service's rules stay the json module's:

    - a body orjson refuses (NaN or Infinity literals, a byte-order mark, a lone
      surrogate) is parsed again by the json module, which accepts them as
      before, so the view still answers with the field at fault, and a body
      that is not JSON gets the json module's error message;
    - a body nested deeper than either parser goes (orjson stops at 1,024 levels,
      the json module near Python's recursion limit) raises JSONTooDeep, a
      ValueError, so that it is a 400 as any other body that cannot be read;
    - what orjson cannot write the same way (keys that are not strings,
      integers beyond 64 bits, a lone surrogate) is written by the json module
      as before; dates and dataclasses go through Flask's `default`.

    Differences kept on purpose: integers beyond 64 bits in a body are read as
    floats; answers are UTF-8 where the json module wrote `\\u` escapes; and
    non-finite floats in an answer are written as null (valid JSON) where the
    json module wrote NaN.
    """

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text or UTF-8 bytes."""
        if not kwargs:
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError:
                pass  # the json module's rules decide, and word the error
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise JSONTooDeep() from None

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Write compact JSON (as `response` asks for) with orjson; anything else with the json module."""
        if kwargs == {"separators": COMPACT}:
            try:
                return orjson.dumps(obj, default=self.default, option=DUMPS_OPTIONS).decode()
            except orjson.JSONEncodeError:
                pass
        return super().dumps(obj, **kwargs)
