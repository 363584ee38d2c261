"""The settings: one class read once, its errors, its one source of defaults, and its docs."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import fields
from pathlib import Path

import pytest

from service.core.settings import Settings, get_settings, load_config, setting_default

ROOT = Path(__file__).resolve().parents[2]


def settings_table_script():
    """Load scripts/settings_table.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_table_is_the_one_made_from_the_settings():
    script = settings_table_script()
    text = (ROOT / "docs" / "operations.md").read_text()
    assert script.document(text) == text, "run `.venv/bin/python scripts/settings_table.py --write`"
    for name, field in Settings.model_fields.items():
        assert f"| `{name}` |" in text and field.description, name


def test_settings_are_read_once_per_process(monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_MB", "7")
    get_settings.cache_clear()
    assert get_settings().MAX_UPLOAD_MB == 7 and load_config()["MAX_UPLOAD_MB"] == 7
    monkeypatch.setenv("MAX_UPLOAD_MB", "8")
    assert get_settings() is get_settings() and get_settings().MAX_UPLOAD_MB == 7
    get_settings.cache_clear()


def test_a_mapping_alone_makes_settings_and_empty_values_are_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "9000")
    settings = Settings.from_environ({"DATA_DIR": str(tmp_path), "MAX_UPLOAD_MB": "", "LOG_FORMAT": "TEXT"})
    assert settings.PORT == 8000 and settings.MAX_UPLOAD_MB == 512 and settings.LOG_FORMAT == "text"
    assert settings.DATABASE_URL == f"sqlite:///{tmp_path / 'backprop.db'}"
    assert settings.CELERY_BROKER_URL == f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    assert Settings.from_environ({"DATABASE_URL": "postgresql://x/y"}).DATABASE_URL == "postgresql://x/y"


@pytest.mark.parametrize(("environ", "message"), [
    ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS must be at least 1"),
    ({"LEASE_TIMEOUT_S": "0"}, "LEASE_TIMEOUT_S and REAPER_INTERVAL_S must be positive"),
    ({"REAPER_INTERVAL_S": "soon"}, "REAPER_INTERVAL_S must be a number of seconds, not 'soon'"),
    ({"JOB_TIME_LIMIT_S": "-1"}, "JOB_TIME_LIMIT_S must be a finite number >= 0, not '-1'"),
    ({"EVENTS_MAX_S": "inf"}, "EVENTS_MAX_S must be a finite number >= 0, not 'inf'"),
    ({"WORKER_DEVICE": "TPU"}, "WORKER_DEVICE must be cpu or gpu, not 'tpu'"),
    ({"PORT": "http"}, "PORT must be a positive integer, not 'http'"),
    ({"CELERY_CONCURRENCY": "0"}, "CELERY_CONCURRENCY must be a positive integer, not '0'"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be a level such as DEBUG, INFO or WARNING, not 'loud'"),
])
def test_a_bad_value_is_a_value_error_naming_it(environ, message):
    with pytest.raises(ValueError) as raised:
        Settings.from_environ(environ)
    assert str(raised.value) == message


def test_overrides_are_validated_like_the_environment():
    settings = Settings.from_environ({})
    assert settings.with_overrides({"AUTH": "OFF", "QUEUE": object()}).AUTH == "off"
    with pytest.raises(ValueError, match="AUTH must be on or off, not 'maybe'"):
        settings.with_overrides({"AUTH": "maybe"})


def test_the_job_settings_defaults_are_the_settings_defaults():
    from workers.lease import JobSettings

    names = {"time_limit_s": "JOB_TIME_LIMIT_S"}
    for field in fields(JobSettings):
        assert field.default == setting_default(names.get(field.name, field.name.upper())), field.name
    assert JobSettings.from_config(load_config({})) == JobSettings()


def test_the_queues_are_the_engines_devices():
    from backprop.backend import DEVICES as ENGINE_DEVICES
    from service.core.settings import DEVICES

    assert DEVICES == ENGINE_DEVICES


def test_no_module_but_the_settings_reads_the_environment():
    reads = re.compile(r"os\.environ(?!\.setdefault)|getenv\(")
    allowed = {ROOT / "service" / "core" / "settings.py"}
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for package in ("service", "workers") for path in sorted((ROOT / package).rglob("*.py"))
             if path not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1) if reads.search(line)]
    assert found == []
