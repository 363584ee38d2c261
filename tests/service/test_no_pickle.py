"""Nothing is pickled, evaluated or imported from input; client file names are never paths.

The code of backprop/, service/ and workers/ is read as Python syntax trees (so a word in
a docstring or comment does not count) and every construct that could run what a client
sent is refused. The scanner is tested on bad code first, so that it cannot pass by
seeing nothing.
"""

from __future__ import annotations

import ast
import io
import pickle
import uuid
from pathlib import Path

import pytest

from tests.conftest import BLOBS_COLUMNS, blobs_rows, csv_text

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backprop", "service", "workers")
# Modules that deserialize objects (and so run code): none of them may be imported.
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "jsonpickle", "marshal",
                  "shelve"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_METHODS = {"import_module", "read_pickle", "to_pickle", "unsafe_load", "full_load", "load_module"}
ARRAY_MODULES = {"np", "numpy", "xp", "cp", "cupy"}


def _name(node: ast.expr) -> str:
    """Return `a.b.c` for a dotted expression, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_constructs(source: str, filename: str = "<code>") -> list[str]:
    """Return `file:line: what` for each construct that could run data as code."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in UNSAFE_CALLS:
                found.append(f"{where}: {name}()")
            elif "." in name and last in UNSAFE_METHODS:
                found.append(f"{where}: {name}()")
            elif name == "yaml.load":
                loader = _keyword(node, "Loader")
                if loader is None or "SafeLoader" not in _name(loader):
                    found.append(f"{where}: yaml.load() without SafeLoader")
            elif last == "load" and name.split(".")[0] in ARRAY_MODULES:
                flag = _keyword(node, "allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{where}: {name}() without allow_pickle=False")
            elif name == "torch.load":
                found.append(f"{where}: torch.load()")
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{where}: allow_pickle other than False")
    return found


@pytest.mark.parametrize("code", [
    "import pickle",
    "import dill as d",
    "from joblib import load",
    "from _pickle import loads",
    "import marshal",
    "eval(request.data)",
    "exec(text)",
    "__import__(name)",
    "importlib.import_module(request.args['m'])",
    "yaml.load(text)",
    "yaml.load(text, Loader=yaml.Loader)",
    "yaml.unsafe_load(text)",
    "np.load(path)",
    "numpy.load(path, allow_pickle=True)",
    "xp.load(buffer, allow_pickle=flag)",
    "pandas.read_pickle(path)",
    "np.savez(h, values=v, allow_pickle=True)",
])
def test_the_scanner_finds_unsafe_code(code):
    assert unsafe_constructs(code), code


@pytest.mark.parametrize("code", [
    "np.load(io.BytesIO(data), allow_pickle=False)",
    "yaml.load(text, Loader=yaml.SafeLoader)",
    "json.loads(text)",
    "re.compile('x')",
    "from importlib.metadata import version",
    "'eval(x) and import pickle in a string'",
])
def test_the_scanner_lets_safe_code_pass(code):
    assert unsafe_constructs(code) == [], code


def test_no_code_of_the_service_unpickles_evaluates_or_imports_input():
    files = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    assert len(files) > 30, files  # the packages are where this test thinks they are
    found = [hit for path in files
             for hit in unsafe_constructs(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_worker_takes_json_messages_only():
    from workers import celery

    assert celery.conf.accept_content == ["json"]
    assert celery.conf.task_serializer == "json" and celery.conf.result_serializer == "json"
    assert celery.conf.result_accept_content in (None, ["json"])


@pytest.mark.parametrize("filename", ["../../pwned-{marker}.csv", "/tmp/pwned-{marker}.csv",
                                      "..\\..\\pwned-{marker}.csv", "{data_dir}/tmp/pwned-{marker}.csv"])
def test_a_client_file_name_is_never_a_path(client, upload_csv, tmp_path, filename):
    marker = uuid.uuid4().hex
    filename = filename.format(marker=marker, data_dir=tmp_path)
    response = upload_csv(csv_text(BLOBS_COLUMNS, blobs_rows(10)), filename=filename)
    assert response.status_code == 201, response.get_json()
    name = response.get_json()["name"]  # the last part only: a label, not a path
    assert name.endswith(f"pwned-{marker}.csv") and "/" not in name and "\\" not in name, name
    # Where the name would land if it were joined to the upload folder, the working folder, or taken as is.
    for as_path in (filename, filename.replace("\\", "/")):
        for base in (tmp_path / "tmp", tmp_path, ROOT, Path.cwd()):
            assert not (base / as_path).resolve().exists(), as_path
    assert not list(tmp_path.rglob(f"*{marker}*"))


class _Exploit:
    """Unpickling this would create `path`: the proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_uploads_are_parsed_never_run(client, upload_csv, tmp_path):
    marker = tmp_path / f"ran-{uuid.uuid4().hex}"
    payload = pickle.dumps(_Exploit(marker))
    code = f"__import__('pathlib').Path('{marker}').touch()"
    refused = [
        upload_csv(payload, filename="model.pkl"),
        client.post("/v1/datasets", data=payload, content_type="application/octet-stream"),
        client.post("/v1/datasets", data=payload, content_type="application/python-pickle"),
        client.post("/v1/networks", data=payload, content_type="application/json"),
    ]
    for response in refused:
        assert 400 <= response.status_code < 500, response.get_data(as_text=True)
        assert response.mimetype == "application/problem+json"
    # Code in a cell is a string like any other: stored as a category, never run.
    stored = upload_csv(f"a,label\n{code},0\n1,1\n", filename="x.py")
    assert stored.status_code == 201 and code in stored.get_json()["columns"][0]["categories"]
    assert not marker.exists()


def test_stored_archives_refuse_a_pickle(tmp_path):
    """Where arrays are read back (a model's or a checkpoint's .npz, a dataset's payload), an
    archive holding a pickled object is refused, not loaded."""
    import numpy as np

    from backprop.checkpoint import unpack
    from service.core.data.parsing import ParsedTable

    marker = tmp_path / f"ran-{uuid.uuid4().hex}"
    buffer = io.BytesIO()
    np.savez(buffer, values=np.array([_Exploit(marker)], dtype=object), columns=np.array("[]"))
    for read in (unpack, ParsedTable.from_npz):
        with pytest.raises(ValueError, match="allow_pickle"):
            read(buffer.getvalue())
    assert not marker.exists()
