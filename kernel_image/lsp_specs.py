"""The language servers the agent can start, and how each is configured."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_image.lsp_cache import COMPLETIONS, link_shared, shared_cache_dir, user_cache_dir

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("lsp_launch.py")
"""Starts pylsp with jedi's completion details of the base environment."""

PYLSP_SETTINGS: dict[str, Any] = {
    "plugins": {
        # ruff lints (as you type: pylsp lints every change) and formats; the linters it
        # replaces stay off.
        "ruff": {"enabled": True, "formatEnabled": True},
        "pycodestyle": {"enabled": False},
        "pyflakes": {"enabled": False},
        "mccabe": {"enabled": False},
        "autopep8": {"enabled": False},
        "yapf": {"enabled": False},
        # pylsp would import numpy, pandas, scipy, matplotlib... into its own process at
        # initialize: seconds of start-up and memory for nothing, as jedi inspects compiled
        # modules in a subprocess of its own anyway.
        "preload": {"enabled": False},
        "jedi_completion": {"enabled": True, "include_params": True, "fuzzy": False},
        "jedi_hover": {"enabled": True},
        "jedi_signature_help": {"enabled": True},
        "jedi_definition": {"enabled": True, "follow_imports": True},
        "jedi_references": {"enabled": True},
        "jedi_rename": {"enabled": True},
        "rope_autoimport": {"enabled": False},
    },
    # Signatures in hovers and completion documentation are laid out by ruff too (pylsp's
    # default is black: a second formatter for the same job).
    "signature": {"formatter": "ruff", "line_length": 88},
}
"""pylsp's settings, given as ``initializationOptions`` and as the answer to
``workspace/configuration``."""


@dataclass(frozen=True)
class ServerSpec:
    """How to run one language server."""

    argv: list[str]
    languages: frozenset[str]
    """``languageId``\\ s of the documents it is given (others' ``didOpen`` are dropped)."""
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Configuration sections by name (``{"pylsp": {...}}``)."""
    prepare: Callable[[], None] | None = None
    """Run (in a thread) before each start of the server."""


def link_jedi_cache() -> None:
    """Give jedi the pickles of the sandbox's base environment (``kernel_image.lsp_cache``):
    completing ``np.`` the first time then parses no numpy stub."""
    try:
        linked = link_shared(shared_cache_dir(), user_cache_dir())
    except OSError as e:
        log.warning("lsp | jedi's shared cache could not be linked: %s", e)
        return
    if linked:
        log.info("lsp | linked %d pickles of jedi's shared cache", linked)


def default_specs() -> dict[str, ServerSpec]:
    """The servers by name: pylsp (with python-lsp-ruff) on the sandbox's Python."""
    return {
        "pylsp": ServerSpec(
            # -P: a workspace file named like a module (json.py) does not replace the module
            # the server imports (nor does a module of the agent's, beside the launcher).
            argv=[
                sys.executable,
                "-P",
                str(LAUNCHER),
                str(shared_cache_dir() / COMPLETIONS),
                "-m",
                "pylsp",
            ],
            languages=frozenset({"python"}),
            settings={"pylsp": PYLSP_SETTINGS},
            prepare=link_jedi_cache,
        )
    }
