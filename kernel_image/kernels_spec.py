"""The one kernelspec the agent offers, ``python3``: ipykernel on the agent's own interpreter.

Pure functions (nothing imported from jupyter_client), so listing kernelspecs stays cheap.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

PYTHON3 = "python3"
RESOURCE_FILES = ("kernel.js", "kernel.css")
"""Resources served besides the ``logo-*`` images (as jupyter_server serves them)."""


@functools.cache
def resource_dir() -> str | None:
    """ipykernel's ``resources`` folder (its logos), found without importing ipykernel."""
    spec = importlib.util.find_spec("ipykernel")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "resources"
    return str(folder) if folder.is_dir() else None


def kernel_python() -> str:
    """The interpreter kernels run: the workspace venv's when the agent made one (so kernels
    import what users install, as ``python`` in a terminal does), else the agent's own."""
    venv = os.environ.get("VIRTUAL_ENV")
    if venv and Path(venv, "bin", "python").exists():
        return str(Path(venv, "bin", "python"))
    return sys.executable


def python3_spec() -> dict[str, Any]:
    """The kernelspec's ``kernel.json`` content, as ipykernel's ``get_kernel_dict`` makes it."""
    return {
        "argv": [kernel_python(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "env": {},
        "display_name": f"Python {sys.version_info[0]} (ipykernel)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": importlib.util.find_spec("debugpy") is not None},
        "kernel_protocol_version": "5.5",
    }


@functools.cache
def resources() -> tuple[str, ...]:
    """File names of the python3 kernelspec's resources."""
    folder = resource_dir()
    if folder is None:
        return ()
    return tuple(
        sorted(
            p.name
            for p in Path(folder).iterdir()
            if p.is_file() and (p.name.startswith("logo-") or p.name in RESOURCE_FILES)
        )
    )


def kernelspec_model(name: str) -> dict[str, Any] | None:
    """jupyter_server's model of one kernelspec; resource URLs are relative to the agent."""
    if name != PYTHON3:
        return None
    links = {}
    for file in resources():
        key = file if file in RESOURCE_FILES else file.rsplit(".", 1)[0]
        links[key] = f"/kernelspecs/{name}/{file}"
    return {"name": name, "spec": python3_spec(), "resources": links}


def kernelspecs_model() -> dict[str, Any]:
    """jupyter_server's ``GET /api/kernelspecs`` answer."""
    return {"default": PYTHON3, "kernelspecs": {PYTHON3: kernelspec_model(PYTHON3)}}


def resource_path(name: str, file: str) -> Path | None:
    """The file of a kernelspec resource, if it is one (never any other file)."""
    folder = resource_dir()
    if name != PYTHON3 or folder is None or file not in resources():
        return None
    return Path(folder) / file
