"""``python -P lsp_launch.py DETAILS -m MODULE [options]``: ``python -P -m MODULE [options]``
(pylsp), with jedi's completion details of the sandbox's base environment
(``kernel_image.lsp_cache.COMPLETIONS``) loaded first.

Run as a file, not as a module of the agent's package: the server gets neither the agent's
import path nor anything of it but this file, which imports only the standard library, jedi and
pylsp. Without readable details, pylsp starts as it would alone.
"""

from __future__ import annotations

import importlib
import os
import pickle
import runpy
import sys
from pathlib import Path


def installed_over(venv: Path | None, module: str) -> bool:
    """Whether the workspace venv ``venv`` has its own copy of ``module``."""
    return venv is not None and any((venv / "lib").glob(f"python*/site-packages/{module}"))


def workspace_venv() -> Path | None:
    """The environment jedi analyses (``VIRTUAL_ENV``) when it is not this interpreter's."""
    venv = os.environ.get("VIRTUAL_ENV")
    if not venv or Path(venv).resolve() == Path(sys.prefix).resolve():
        return None
    return Path(venv)


def load_details(path: Path) -> None:
    """Add the details pickled at ``path`` to jedi's completion cache, but those of modules the
    workspace venv installs a copy of (another version, whose details jedi computes)."""
    try:
        with path.open("rb") as f:
            details = pickle.load(f)  # noqa: S301 - written by the venv's build, read-only here
    except (OSError, EOFError, pickle.UnpicklingError):
        return
    if not isinstance(details, dict):
        return
    venv = workspace_venv()
    kept = {name: names for name, names in details.items() if not installed_over(venv, name)}
    importlib.import_module("jedi.api.completion_cache")._cache.update(kept)


def main() -> None:
    """Load the details named by the first argument, then run the module named after ``-m``
    with the arguments that follow it."""
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit(f"usage: {sys.argv[0]} DETAILS -m MODULE [options]")
    details, _, module = sys.argv[1:4]
    del sys.argv[1:4]
    load_details(Path(details))
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
