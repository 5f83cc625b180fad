"""The workspace's own Python environment: a venv at ``<root>/.venv`` layered over the
sandbox's base environment, where ``pip install`` and ``uv pip install`` put what users add.

The base environment (numpy, pandas, ipykernel, ...) is read-only; the venv sees it through a
``.pth`` file, so its own packages come first and the base's stay importable. The venv is made
without pip (milliseconds instead of seconds): ``bin/pip`` runs the base's pip with the venv's
interpreter, which installs into the venv. Terminals, kernels and the language server inherit
the variables of ``variables()``, so ``python``, ``pip`` and ``uv`` all mean this venv and its
package index, the agent's loopback relay (``kernel_image.package_relay``).
"""

from __future__ import annotations

import email.parser
import json
import logging
import os
import re
import site
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kernel_image.pyenv")

ENV_DIR = ".venv"
BASE_PTH = "_sandbox_base.pth"
PIP_SHIM = '#!/bin/sh\nexec "$(dirname "$0")/python" -m pip "$@"\n'
_NAME_SEPARATORS = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """A project name as the package index compares names (PEP 503)."""
    return _NAME_SEPARATORS.sub("-", name).lower()


@dataclass(frozen=True)
class Dist:
    """One installed distribution: its name, version, and where it came from when that was not
    the package index (``source``: the URL pip recorded in ``direct_url.json``)."""

    name: str
    version: str
    source: str | None = None

    def as_json(self) -> dict[str, str | None]:
        """The wire form (see docs/agent-protocol.md)."""
        return {"name": self.name, "version": self.version, "source": self.source}


class WorkspaceEnv:
    """The venv at ``<root>/.venv``: made at start-up, scanned for what is installed in it."""

    def __init__(self, root: str, index_url: str | None) -> None:
        self.root = root
        self.path = Path(root) / ENV_DIR
        self.index_url = index_url
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        self.site_packages = self.path / "lib" / version / "site-packages"
        self.python = self.path / "bin" / "python"

    def create(self) -> None:
        """Make the venv (or complete one left from before): interpreter, base ``.pth``, pip
        shims and ``pip.conf``."""
        if not (self.path / "pyvenv.cfg").exists():
            venv.EnvBuilder(with_pip=False, symlinks=True).create(self.path)
        self.site_packages.mkdir(parents=True, exist_ok=True)
        (self.site_packages / BASE_PTH).write_text("".join(f"{d}\n" for d in base_site_dirs()))
        for name in ("pip", "pip3", f"pip{sys.version_info[0]}.{sys.version_info[1]}"):
            shim = self.path / "bin" / name
            shim.write_text(PIP_SHIM)
            shim.chmod(0o755)
        if self.index_url:
            (self.path / "pip.conf").write_text(
                f"[global]\nindex-url = {self.index_url}\ndisable-pip-version-check = true\n"
            )

    def variables(self) -> dict[str, str]:
        """What every process started in the sandbox gets in its environment."""
        variables = {
            "VIRTUAL_ENV": str(self.path),
            "PATH": f"{self.path / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        if self.index_url:
            variables |= {
                "PIP_INDEX_URL": self.index_url,
                "UV_INDEX_URL": self.index_url,
                # uv would otherwise look for Python interpreters to download.
                "UV_PYTHON_DOWNLOADS": "never",
            }
        return variables

    def installed(self) -> dict[str, Dist] | None:
        """The distributions installed in the venv, by normalized name; None while one is
        being written (a dist-info folder without its ``RECORD`` yet)."""
        found: dict[str, Dist] = {}
        try:
            entries = list(os.scandir(self.site_packages))
        except OSError:
            return {}
        for entry in entries:
            if not entry.name.endswith(".dist-info") or not entry.is_dir():
                continue
            folder = Path(entry.path)
            if not (folder / "RECORD").exists():
                return None
            dist = read_dist(folder)
            if dist is not None:
                found[normalize(dist.name)] = dist
        return found


def read_dist(folder: Path) -> Dist | None:
    """The distribution a ``.dist-info`` folder describes, None if it is unreadable."""
    try:
        metadata = email.parser.HeaderParser().parsestr(
            (folder / "METADATA").read_text(errors="replace")
        )
    except OSError:
        return None
    name, version = metadata.get("Name"), metadata.get("Version")
    if not name or not version:
        return None
    return Dist(str(name), str(version), direct_url(folder))


def direct_url(folder: Path) -> str | None:
    """The URL a distribution was installed from when not from an index (PEP 610)."""
    try:
        data = json.loads((folder / "direct_url.json").read_text())
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return url if isinstance(url, str) else None


def base_site_dirs() -> list[str]:
    """The base environment's package folders, as the agent's own interpreter sees them."""
    folders = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    folders += site.getsitepackages()
    return list(dict.fromkeys(f for f in folders if Path(f).is_dir()))
