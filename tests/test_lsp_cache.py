"""jedi's shared cache (``kernel_image.lsp_cache``): built from real completions, linked into a
server's own cache folder, and its completion details given to the server by
``kernel_image/lsp_launch.py``."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

from kernel_image.lsp_cache import COMPLETIONS, SOURCES, link_shared
from kernel_image.lsp_specs import LAUNCHER, default_specs
from tests.test_agent_kernels import REPO, SANDBOX_PYTHON

PROBE = """\
import json
from jedi.api import completion_cache
print(json.dumps({"cache": completion_cache._cache, "argv": __import__("sys").argv[1:]}))
"""


def make_shared(folder: Path, names: list[str]) -> Path:
    """A shared cache with one version folder holding a pickle of each of ``names``, parsed
    from a file of that name written before it."""
    version = folder / "CPython-311-33"
    version.mkdir(parents=True)
    sources = {}
    for name in names:
        source = folder.parent / f"{name}.py"
        source.write_text("x = 1\n")
        os.utime(source, (1_000_000, 1_000_000))
        (version / f"{name}.pkl").write_bytes(name.encode())
        sources[f"CPython-311-33/{name}.pkl"] = str(source)
    (folder / SOURCES).write_text(json.dumps(sources))
    return folder


def test_every_shared_pickle_is_linked_once_and_own_ones_stay(tmp_path: Path) -> None:
    shared = make_shared(tmp_path / "shared", ["a", "b"])
    own = tmp_path / "own" / "CPython-311-33"
    own.mkdir(parents=True)
    (own / "b.pkl").write_bytes(b"parsed in this workspace")

    assert link_shared(shared, tmp_path / "own") == 1
    assert (own / "a.pkl").is_symlink()
    assert (own / "a.pkl").resolve() == shared / "CPython-311-33" / "a.pkl"
    assert (own / "a.pkl").read_bytes() == b"a"
    assert not (own / "b.pkl").is_symlink()
    assert (own / "b.pkl").read_bytes() == b"parsed in this workspace"
    assert link_shared(shared, tmp_path / "own") == 0


def test_a_pickle_older_than_its_file_or_without_it_is_not_linked(tmp_path: Path) -> None:
    shared = make_shared(tmp_path / "shared", ["changed", "gone", "same"])
    (tmp_path / "changed.py").write_text("x = 2\n")  # now: newer than its pickle
    (tmp_path / "gone.py").unlink()

    assert link_shared(shared, tmp_path / "own") == 1
    assert [p.name for p in (tmp_path / "own" / "CPython-311-33").iterdir()] == ["same.pkl"]


def test_without_a_shared_cache_nothing_is_linked(tmp_path: Path) -> None:
    assert link_shared(tmp_path / "missing", tmp_path / "own") == 0
    assert not (tmp_path / "own").exists()


def test_a_build_pickles_what_completion_parsed_and_numpy_details(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    # The sandbox venv's interpreter, as python_env builds it (numpy is installed there).
    code = (
        "import sys; from pathlib import Path; from kernel_image.lsp_cache import build; "
        "build(Path(sys.argv[1]), ('import json\\njson.', 'import numpy as np\\nnp.'))"
    )
    subprocess.run(
        [str(SANDBOX_PYTHON), "-P", "-c", code, str(shared)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    sources = json.loads((shared / SOURCES).read_text())
    [version] = [p for p in shared.iterdir() if p.is_dir()]
    assert sorted(sources) == sorted(f"{version.name}/{p.name}" for p in version.iterdir())
    assert "/json/__init__.py" in "".join(sources.values())
    assert link_shared(shared, tmp_path / "own") == len(sources) > 1
    with (shared / COMPLETIONS).open("rb") as f:
        details = pickle.load(f)  # noqa: S301 - written by this test
    # Kind, signature and documentation of each name, as jedi computes them in pylsp (which
    # has numpy imported rather than read from its stubs, where arange is an import).
    kind, signature, documentation = details["numpy"]["arange"]
    assert kind == "function"
    assert signature.startswith("arange(")
    assert "evenly spaced values" in documentation


def launch(tmp_path: Path, details: Path, venv: Path | None = None) -> dict[str, object]:
    """What a module run by the launcher finds in jedi's completion cache, and its argv, with
    ``venv`` as the workspace venv."""
    (tmp_path / "probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHONPATH"] = str(tmp_path)
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
    out = subprocess.run(
        [sys.executable, "-P", str(LAUNCHER), str(details), "-m", "probe", "--check"],
        capture_output=True,
        check=True,
        text=True,
        env=env,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_the_launcher_gives_the_module_the_details_and_its_arguments(tmp_path: Path) -> None:
    details = tmp_path / COMPLETIONS
    entry = {"numpy": {"array": ["function", "array(object)", "Create an array."]}}
    details.write_bytes(pickle.dumps(entry))
    assert launch(tmp_path, details) == {"cache": entry, "argv": ["--check"]}


def test_details_of_a_module_the_workspace_venv_installs_again_are_left_out(
    tmp_path: Path,
) -> None:
    details = tmp_path / COMPLETIONS
    pandas = {"DataFrame": ["class", "DataFrame(data)", "Two-dimensional data."]}
    numpy = {"array": ["function", "array(object)", "Create an array."]}
    entry = {"numpy": numpy, "pandas": pandas}
    details.write_bytes(pickle.dumps(entry))
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.11" / "site-packages" / "numpy").mkdir(parents=True)
    assert launch(tmp_path, details, venv)["cache"] == {"pandas": pandas}


def test_without_details_the_launcher_runs_the_module_alone(tmp_path: Path) -> None:
    assert launch(tmp_path, tmp_path / "missing") == {"cache": {}, "argv": ["--check"]}


def test_pylsp_is_started_through_the_launcher_with_the_shared_details() -> None:
    argv = default_specs()["pylsp"].argv
    assert argv[2:] == [
        str(LAUNCHER),
        str(Path(sys.prefix, "share", "jedi-cache", COMPLETIONS)),
        "-m",
        "pylsp",
    ]
