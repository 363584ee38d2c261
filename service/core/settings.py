"""The service's settings: one pydantic-settings class, read from the environment once per process.

Every environment variable the API and the workers read is a field of `Settings`,
with its default, its validation and what it means (the field's description, which
docs/operations.md's settings table is generated from: `scripts/settings_table.py`).
A bad value is a ValueError naming the variable when the process starts, not a
surprise later. An unset or empty variable takes the default.

`get_settings()` reads the environment once and keeps the answer; `load_config()`
gives the same values as the dict that Flask's app.config and the workers use.
Importing this module loads neither numpy nor Flask (workers/__init__.py reads
CELERY_CONCURRENCY through it before numpy loads).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# The devices a worker trains on, and the names of their queues. The engine's
# backprop.backend.DEVICES is the same list (a test pins them): importing it here would load numpy.
DEVICES = ("cpu", "gpu")
AUTH_MODES = ("on", "off")
LOG_FORMATS = ("json", "text")

# The settings each shared validator below reads.
_SECONDS = ("REAPER_INTERVAL_S", "LEASE_TIMEOUT_S", "REQUEUE_QUEUED_AFTER_S", "JOB_TIME_LIMIT_S",
            "CHECKPOINT_INTERVAL_S", "PROGRESS_INTERVAL_S", "VISIBILITY_TIMEOUT_S",
            "EVENTS_POLL_S", "EVENTS_HEARTBEAT_S", "EVENTS_MAX_S", "KEY_CACHE_TTL_S")
_POSITIVE_INTEGERS = ("PORT", "MAX_UPLOAD_MB", "MAX_PARAMETERS", "MAX_ACTIVATION_FLOATS",
                      "MAX_PREDICT_VALUES", "TENANT_MAX_CONCURRENT_JOBS",
                      "TENANT_MAX_STORED_MB", "MODEL_CACHE_SIZE", "CELERY_CONCURRENCY",
                      "MAX_JSON_MB", "MAX_COLUMNS", "MAX_DISTINCT_STRINGS", "MAX_CATEGORIES",
                      "EVENTS_MAX_STREAMS_PER_PROCESS", "EVENTS_MAX_STREAMS_PER_TENANT", "EVENTS_BACKLOG_PAGE")


# Set while Settings are made from a mapping alone: the process's environment is not read then.
_MAPPING_ONLY: ContextVar[bool] = ContextVar("settings_from_a_mapping", default=False)


@contextmanager
def _validated(mapping_only: bool) -> Iterator[None]:
    """Read from the given values only (or the environment too); pydantic's errors as one ValueError.

    pydantic's ValidationError is a ValueError too, but its text is pydantic's: ours names
    each bad variable in the validators' words.
    """
    token = _MAPPING_ONLY.set(mapping_only)
    try:
        yield
    except ValidationError as error:
        raise ValueError("; ".join(_message(detail) for detail in error.errors())) from None
    finally:
        _MAPPING_ONLY.reset(token)


def _shown(default: str) -> dict[str, Any]:
    """Say what the settings table shows as the default of a setting whose default is derived."""
    return {"shown_default": default}


class Settings(BaseSettings):
    """Every setting of the API and the workers, read from environment variables of the same name."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore",
                                      validate_default=True)

    # --- where things are ----------------------------------------------------------------------
    DATA_DIR: Path = Field(Path("./var"), json_schema_extra=_shown("`./var`"), description=(
        "where embedded mode keeps its SQLite files, and scratch space (uploads in progress, "
        "the workers' dataset cache)"))
    DATABASE_URL: str = Field("", json_schema_extra=_shown("`sqlite:///$DATA_DIR/backprop.db`"), description=(
        "SQLAlchemy URL of the store, e.g. `postgresql+psycopg://user:password@host:5432/backprop`"))
    CELERY_BROKER_URL: str = Field("", json_schema_extra=_shown("`sqla+sqlite:///$DATA_DIR/broker.db`"),
                                   description=("Celery broker: Kombu's SQLAlchemy transport, or "
                                                "`redis://host:6379/0`"))
    PORT: int = Field(8000, description="port of the API (`make run`, and the host port under compose)")

    # --- what a request may ask ----------------------------------------------------------------
    MAX_UPLOAD_MB: int = Field(512, description="largest accepted upload; larger ones get 413")
    # A JSON body becomes Python objects 7 to 22 times its size (16 MB of rows: 120 to 350 MB)
    # before anything can count or validate them.
    MAX_JSON_MB: int = Field(16, description=(
        "largest JSON body (dataset rows, a predict's inputs, a network, a job); a larger one is a 413 "
        "naming this limit, checked before the body is read (the smaller of this and `MAX_UPLOAD_MB` "
        "applies)"))
    MAX_COLUMNS: int = Field(10_000, description=(
        "most columns a dataset may have (CSV or JSON rows); a wider one is a 422, counted right after "
        "the header, before any row is read"))
    # An upload's first pass keeps each string column's distinct values: 10,000 such columns of
    # 10,000 values would be 100M Python strings.
    MAX_DISTINCT_STRINGS: int = Field(1_000_000, description=(
        "most distinct strings an upload's first pass keeps across all its columns; past it the column "
        "holding the most is no longer counted: it becomes an identifier that no job can use as a feature"))
    MAX_CATEGORIES: int = Field(1_000, description=(
        "most categories a string column keeps (the most frequent); its rarer values fold into one "
        "category `other`, and the dataset's warnings say how many"))
    # Trainable scalars a network may have (weights and biases): 200 MB of float32, a few
    # times that with gradients and Adam's moments. Checked before anything is allocated.
    MAX_PARAMETERS: int = Field(50_000_000, description=(
        "largest network, in trainable scalars (weights and biases); a bigger one is a 422 naming its "
        "largest layer, counted before anything is allocated"))
    # A forward pass keeps every node's values for its rows, whatever the parameters: a
    # 1,000,000-unit layer is 4 MB a row. 200 MB of float32 by default (training's gradients
    # add about as much again).
    MAX_ACTIVATION_FLOATS: int = Field(50_000_000, description=(
        "largest forward pass, in values: (the sum of a network's widths, its input's included) x "
        "(rows in one pass). A job whose `training.batch_size` rows exceed it, or a network whose one "
        "row does, is a 422; `/predict` and the validation split run in row chunks within it"))
    # What bounds a /predict request's time once its memory is bounded: ~0.3-0.4 G values/s on
    # 2 busy cores, so the default is a few seconds (100,000 rows of a 1,000,000-wide network: minutes).
    MAX_PREDICT_VALUES: int = Field(1_000_000_000, description=(
        "values one `/predict` request may pass through the network in all: rows x (the sum of its "
        "widths); more is a 413 saying how many rows the model takes per request"))
    WORKER_DEVICE: str = Field("cpu", description=(
        "`cpu` or `gpu`: the kind of host a worker runs on (a job's own `device` picks its queue, "
        "`cpu` or `gpu`, and what it trains on)"))

    # --- tenants -------------------------------------------------------------------------------
    AUTH: str = Field("on", json_schema_extra=_shown("`on` (`make run`: `off`)"), description=(
        "`on`: every `/v1` request needs `Authorization: Bearer KEY` (401 otherwise); `off`: no keys, "
        "everything belongs to tenant `default` (only for an API on 127.0.0.1). Anything else stops "
        "the start"))
    # Per-tenant limits (docs/service.md); a tenant row may override each.
    TENANT_MAX_CONCURRENT_JOBS: int = Field(8, description=(
        "jobs a tenant may have queued or running at once; one more is a 429 with `Retry-After` "
        "(a tenant's own limit: `flask --app service tenants set-limits`)"))
    TENANT_MAX_STORED_MB: int = Field(10240, description=(
        "MB a tenant may store (its datasets' payloads, its models' weights, its jobs' epoch records and its "
        "batch predictions' files until they are deleted); an upload past it, or a job when it is reached, "
        "is a 413"))
    KEY_CACHE_TTL_S: float = Field(10.0, description=(
        "seconds an API process remembers a key it looked up: a revoked key stops working within this"))

    # --- job recovery (docs/jobs.md); seconds unless named otherwise -----------------------------
    LEASE_TIMEOUT_S: float = Field(60.0, description=(
        "a running job whose heartbeat is older is presumed lost and taken over by another worker, "
        "which resumes it from its checkpoint; heartbeats come every `min(5, LEASE_TIMEOUT_S / 4)` s "
        "between batches"))
    REAPER_INTERVAL_S: float = Field(10.0, description=(
        "how often each worker's reaper looks for stale leases, lost messages and cancelled jobs of "
        "dead workers"))
    REQUEUE_QUEUED_AFTER_S: float = Field(300.0, description=(
        "a job still `queued` this long after it was last published is published again (a duplicate "
        "cannot train twice)"))
    MAX_ATTEMPTS: int = Field(3, description=(
        "lost leases (or failed starts) after which a job fails with a clear error instead of running "
        "again"))
    JOB_TIME_LIMIT_S: float = Field(24 * 3600.0, description=(
        "wall-clock limit from the job's first start, across attempts; 0: none. A job's own "
        "`time_limit_s` applies too: the smaller wins"))
    CHECKPOINT_INTERVAL_S: float = Field(30.0, description=(
        "at most one checkpoint write per this many seconds: a resumed job loses at most this much work"))
    # Short epochs are not slowed by a write each.
    PROGRESS_INTERVAL_S: float = Field(1.0, description=(
        "at most one progress transaction (the epoch records since the last one, the heartbeat, the "
        "cancel flag) per this many seconds while a job trains"))
    VISIBILITY_TIMEOUT_S: float = Field(3600.0, description=(
        "Redis only: seconds before an unacknowledged message is delivered again"))

    # --- live events (docs/operations.md) ------------------------------------------------------
    EVENTS_POLL_S: float = Field(0.5, description="how often an event stream reads the database")
    # Short enough that a client gone behind a proxy (or under a server that does not hand
    # over its socket) is noticed at the second write that fails: within 2 x this.
    EVENTS_HEARTBEAT_S: float = Field(5.0, description=(
        "an event stream silent this long writes a comment line, so proxies do not close it and a "
        "client that went away is noticed"))
    # A stream holds a gunicorn thread: EventSource reconnects with Last-Event-ID, so a
    # forgotten browser tab cannot hold a thread forever.
    EVENTS_MAX_S: float = Field(300.0, description=(
        "an event stream ends after this long (the client reconnects with `Last-Event-ID`)"))
    # The budget: compose runs each gunicorn process with --threads 4, and a stream holds a
    # thread while it is open; half of them may, so the other requests always find threads.
    EVENTS_MAX_STREAMS_PER_PROCESS: int = Field(2, description=(
        "event streams one API process serves at once (each holds one of its gunicorn threads: keep it "
        "below `--threads`); one more is a 429 with `Retry-After`"))
    EVENTS_MAX_STREAMS_PER_TENANT: int = Field(1, description=(
        "event streams one tenant may have open in one API process (below the process's limit, so one "
        "tenant cannot take them all); one more is a 429 with `Retry-After`. Not applied with AUTH=off"))
    EVENTS_BACKLOG_PAGE: int = Field(500, description=(
        "epoch records an event stream reads per query when it catches up (after `Last-Event-ID`), so "
        "a long job's backlog is never in memory at once"))

    # --- processes -----------------------------------------------------------------------------
    MODEL_CACHE_SIZE: int = Field(32, description=(
        "built networks each API process keeps for `/predict`, one cache shared by all tenants (an "
        "entry is only ever served to its own tenant)"))
    CELERY_CONCURRENCY: int | None = Field(None, json_schema_extra=_shown("the number of cores"), description=(
        "Celery processes per worker when the command line gives no `--concurrency`; each gets "
        "cores / concurrency BLAS threads"))
    LOG_FORMAT: str | None = Field(None, json_schema_extra=_shown("`json` (`text` in a terminal)"), description=(
        "`json`: one JSON object per line; `text`: readable lines. Unset: json unless stderr is a "
        "terminal"))
    LOG_LEVEL: str | None = Field(None, json_schema_extra=_shown("`INFO`"), description=(
        "level of the logs; a Celery worker without it uses its `--loglevel`"))

    # --- validation: the messages name the variable and the bad value ---------------------------

    @field_validator(*_SECONDS, mode="before")
    @classmethod
    def _seconds(cls, raw: Any, info: ValidationInfo) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{info.field_name} must be a number of seconds, not {raw!r}") from None
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"{info.field_name} must be a finite number >= 0, not {raw!r}")
        if value == 0 and info.field_name in ("LEASE_TIMEOUT_S", "REAPER_INTERVAL_S"):
            raise ValueError("LEASE_TIMEOUT_S and REAPER_INTERVAL_S must be positive")
        return value

    @field_validator("MAX_ATTEMPTS", mode="before")
    @classmethod
    def _attempts(cls, raw: Any) -> int:
        try:
            value = float(raw)  # read like the seconds, as it always was: "2.0" is 2
        except (TypeError, ValueError):
            raise ValueError(f"MAX_ATTEMPTS must be a number, not {raw!r}") from None
        if not value >= 1 or math.isinf(value):
            raise ValueError("MAX_ATTEMPTS must be at least 1")
        return int(value)

    @field_validator(*_POSITIVE_INTEGERS, mode="before")
    @classmethod
    def _positive_integer(cls, raw: Any, info: ValidationInfo) -> int | None:
        if raw is None and info.field_name == "CELERY_CONCURRENCY":
            return None
        try:
            value = int(raw)  # int() reads 50_000_000 too
        except (TypeError, ValueError):
            raise ValueError(f"{info.field_name} must be a positive integer, not {raw!r}") from None
        if value < 1:
            raise ValueError(f"{info.field_name} must be a positive integer, not {raw!r}")
        return value

    @field_validator("DATA_DIR", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("DATABASE_URL", "CELERY_BROKER_URL", mode="after")
    @classmethod
    def _embedded_default(cls, value: str, info: ValidationInfo) -> str:
        """Unset, the store and the broker are SQLite files under DATA_DIR (embedded mode)."""
        data_dir = info.data.get("DATA_DIR")
        if value or data_dir is None:
            return value
        if info.field_name == "DATABASE_URL":
            return f"sqlite:///{data_dir / 'backprop.db'}"
        return f"sqla+sqlite:///{data_dir / 'broker.db'}"

    @field_validator("WORKER_DEVICE", mode="before")
    @classmethod
    def _device(cls, raw: Any) -> str:
        device = str(raw).lower()
        if device not in DEVICES:
            raise ValueError(f"WORKER_DEVICE must be cpu or gpu, not {device!r}")
        return device

    @field_validator("AUTH", mode="before")
    @classmethod
    def _auth(cls, raw: Any) -> str:
        """AUTH is on or off; anything else is an error at start, never a silently open API."""
        mode = str(raw).strip().lower()
        if mode not in AUTH_MODES:
            raise ValueError(f"AUTH must be on or off, not {raw!r}")
        return mode

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _log_format(cls, raw: Any) -> str | None:
        chosen = str(raw).lower() if raw is not None else None
        if chosen is not None and chosen not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT must be json or text, not {chosen!r}")
        return chosen

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _log_level(cls, raw: Any) -> str | None:
        level = str(raw).upper() if raw is not None else None
        if level is not None and not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"LOG_LEVEL must be a level such as DEBUG, INFO or WARNING, not {raw!r}")
        return level

    # --- reading ---------------------------------------------------------------------------------

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The values given, then the environment (not while reading a mapping alone); no .env file."""
        return (init_settings,) if _MAPPING_ONLY.get() else (init_settings, env_settings)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from the environment, or from `environ` alone; empty values are unset.

        Raises
        ------
        ValueError
            A value is bad; the message names each bad variable.
        """
        if environ is None:
            with _validated(mapping_only=False):
                return cls.model_validate({})
        values = {name: environ[name] for name in cls.model_fields if environ.get(name) not in (None, "")}
        with _validated(mapping_only=True):
            return cls.model_validate(values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """Return these settings with those of `overrides` replaced, validated as the environment is.

        Keys that are not settings (create_app's QUEUE, TESTING ...) are left out.
        """
        values = {**self.model_dump(), **{k: v for k, v in overrides.items() if k in type(self).model_fields}}
        with _validated(mapping_only=True):
            return type(self).model_validate(values)

    def as_config(self) -> dict[str, Any]:
        """Return the settings as the dict Flask's app.config and the workers read (DATA_DIR a str)."""
        config = self.model_dump()
        config["DATA_DIR"] = str(self.DATA_DIR)
        return config


def _message(detail: Any) -> str:
    """Say what is wrong with one setting: our validators' sentences, else pydantic's, named."""
    message = str(detail["msg"]).removeprefix("Value error, ")
    name = ".".join(str(part) for part in detail["loc"])
    return message if message.startswith(name) or not name else f"{name}: {message}"


def setting_default(name: str) -> Any:
    """Return a setting's default (one source for what JobSettings and the docs' table show)."""
    return Settings.model_fields[name].default


@cache
def get_settings() -> Settings:
    """Return this process's settings, read from the environment on the first call."""
    return Settings.from_environ()


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the configuration dict: this process's settings, or those of `environ` when given."""
    settings = get_settings() if environ is None else Settings.from_environ(environ)
    return settings.as_config()


def is_sqlite(url: str) -> bool:
    """Say whether a database URL points at SQLite."""
    return url.startswith("sqlite")
