"""The language servers the agent can start, and how each is configured."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

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


def default_specs() -> dict[str, ServerSpec]:
    """The servers by name: pylsp (with python-lsp-ruff) on the sandbox's Python."""
    return {
        "pylsp": ServerSpec(
            # -P: a workspace file named like a module (json.py) does not replace the module
            # the server imports.
            argv=[sys.executable, "-P", "-m", "pylsp"],
            languages=frozenset({"python"}),
            settings={"pylsp": PYLSP_SETTINGS},
        )
    }
