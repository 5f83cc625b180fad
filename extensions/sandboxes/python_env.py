"""The sandboxes' Python: a separate venv the sandbox binds read-only, and how to build it.

``python -m extensions.sandboxes.python_env BUILD_DIR`` (run by ``make install``) builds it.
The venv is made from a base interpreter that a sandbox can see: Debian's ``/usr/bin/python3``
when it is 3.11 or newer (``/usr`` is bound into every sandbox), otherwise the interpreter
running this module, whose installation prefix the spawner then binds read-only at the same
path (see ``base_prefix``). It includes the system site-packages so that user site-packages
(``pip install --user``, under ``$HOME`` = ``/workspace``) stay enabled, as venvs otherwise
disable them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The pinned list the sandbox image installs too (one list, so both spawners run the same
# numpy, pandas, ipykernel, tornado...).
REQUIREMENTS = REPO / "kernel_image" / "requirements.txt"

# Host folders every sandbox sees read-only: an interpreter under them needs no extra bind.
SYSTEM_PREFIXES = ("/usr", "/bin", "/lib", "/lib64", "/sbin")

DEBIAN_PYTHON = Path("/usr/bin/python3")
MIN_VERSION = (3, 11)

_PROBE = f"import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= {MIN_VERSION!r} else 1)"


class PythonEnvError(Exception):
    """The sandbox venv cannot be built or used; the message says why."""


def is_system_path(path: Path) -> bool:
    """Whether ``path`` lies under a folder bound into every sandbox."""
    return any(path == Path(p) or Path(p) in path.parents for p in SYSTEM_PREFIXES)


def find_base_python() -> Path:
    """The interpreter to make the venv from: Debian's if it is new enough, else this one."""
    if DEBIAN_PYTHON.exists():
        probe = subprocess.run(  # noqa: S603 - a fixed interpreter and program
            [str(DEBIAN_PYTHON), "-c", _PROBE], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return DEBIAN_PYTHON
    return Path(getattr(sys, "_base_executable", sys.executable))


def base_prefix(env: Path) -> Path | None:
    """The base interpreter's prefix the sandbox must bind for ``env``; None if under /usr.

    Read from ``pyvenv.cfg``'s ``home`` (the folder of the base interpreter).
    """
    home = read_home(env)
    if is_system_path(home):
        return None
    return home.parent


def read_home(env: Path) -> Path:
    """The ``home`` of a venv's ``pyvenv.cfg``: where its base interpreter lives."""
    cfg = env / "pyvenv.cfg"
    try:
        lines = cfg.read_text().splitlines()
    except OSError as e:
        msg = (
            f"{env} is not a Python venv ({e.strerror}: {cfg}). Build it with "
            f"`python -m extensions.sandboxes.python_env {env}` (make install does)."
        )
        raise PythonEnvError(msg) from e
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip())
    msg = f"{cfg} has no `home` line: rebuild the venv."
    raise PythonEnvError(msg)


def build(
    build_dir: Path,
    packages: Sequence[str] = ("-r", str(REQUIREMENTS)),
    base_python: Path | None = None,
) -> None:
    """Create (or update) the venv at ``build_dir``, install ``packages`` (pip arguments; by
    default the pinned list) into it, then build the language servers' shared cache of jedi in
    it (``kernel_image/lsp_cache.py``, which needs jedi among the packages).

    With no packages, the venv is made without pip or the cache (fast; tests use that).
    """
    base = base_python or find_base_python()
    if build_dir.resolve() == Path(sys.prefix).resolve():
        msg = f"{build_dir} is the platform's own environment; the sandbox needs its own."
        raise PythonEnvError(msg)
    args = [str(base), "-m", "venv", "--system-site-packages"]
    if not packages:
        args.append("--without-pip")
    _run([*args, str(build_dir)])
    if packages:
        python = str(build_dir / "bin" / "python")
        _run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
        _run([python, "-m", "pip", "install", "--quiet", "--upgrade", *packages])
        # Last, once the venv's files no longer change: the language servers' shared cache of
        # parsed modules (kernel_image/lsp_cache.py), which the sandbox cannot write.
        _run([python, "-P", "-m", "kernel_image.lsp_cache"], {"PYTHONPATH": str(REPO)})


def _run(args: list[str], env: Mapping[str, str] | None = None) -> None:
    environ = {**os.environ, **env} if env else None
    result = subprocess.run(args, check=False, env=environ)  # noqa: S603 - our own interpreters
    if result.returncode != 0:
        msg = f"`{' '.join(args)}` failed with exit status {result.returncode}."
        raise PythonEnvError(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m extensions.sandboxes.python_env BUILD_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("build_dir", type=Path, help="where to create the sandbox venv")
    parser.add_argument(
        "--python", type=Path, default=None, help="base interpreter (default: found automatically)"
    )
    options = parser.parse_args(argv)
    try:
        build(options.build_dir, base_python=options.python)
    except PythonEnvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
