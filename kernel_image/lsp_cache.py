"""jedi's cache of parsed modules (parso pickles): built once for the sandbox's base environment
next to it, shared read-only by every sandbox, and seen by each language server through links
in its own writable cache folder.

parso keeps one pickle per parsed file, named after a hash of the file's path, in
``<cache>/<version tag>/``, and reads only one cache folder. A server's folder
(``$XDG_CACHE_HOME/jedi``, by default ``~/.cache/jedi``) therefore gets a symbolic link to every
shared pickle it lacks before the server starts: numpy, pandas and the standard library come
parsed already, and what the workspace adds (its own files, packages a user installs) is
pickled beside the links as usual. parso parses a file again when its pickle is older and
writes the new pickle over the old one, which a link to the read-only venv would refuse: a
shared pickle older than its file (the venv or the system's Python changed since the build) is
not linked.

``python -m kernel_image.lsp_cache``, run by the sandbox venv's interpreter, builds it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

WARM_SOURCES = (
    "import numpy as np\nnp.",
    "import numpy as np\nnp.array([1]).",
    "import numpy as np\nnp.linalg.",
    "import pandas as pd\npd.",
    "import pandas as pd\npd.DataFrame().",
    "import pandas as pd\npd.Series().",
    "import scipy\nscipy.",
    "import matplotlib.pyplot as plt\nplt.",
    "import os, sys, json, re, math, pathlib, collections, typing, datetime, itertools\nos.",
    "import pathlib\npathlib.Path().",
    "''.",
)
"""Sources completed at their end to build the cache: what they import, and what defines each
name offered, gets parsed."""


SOURCES = "sources.json"
"""``{"<version tag>/<pickle>": "<the file it was parsed from>"}``."""
COMPLETIONS = "completions.pickle"
"""jedi's completion details (kind, signature and documentation of every name numpy, pandas and
matplotlib offer after a dot: ``jedi.api.completion_cache``), which it computes for all of them
at their first completion, most of the first ``np.``'s time (docs/language-servers.md);
``kernel_image/lsp_launch.py`` gives them to the server."""


def shared_cache_dir(prefix: str = sys.prefix) -> Path:
    """The shared cache of the environment at ``prefix`` (by default this interpreter's)."""
    return Path(prefix, "share", "jedi-cache")


def user_cache_dir() -> Path:
    """The cache folder jedi uses with this process's environment (on Linux)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "jedi").expanduser()


def link_shared(shared: Path, private: Path) -> int:
    """Link, in ``private``, every pickle of ``shared`` it lacks and that is not older than its
    file (parso would write over such a one, through the link, where the venv is read-only);
    how many were linked. Nothing happens when there is no shared cache."""
    try:
        sources: dict[str, str] = json.loads((shared / SOURCES).read_text())
    except (OSError, ValueError):
        return 0
    linked = 0
    for name, source in sources.items():
        pickled, link = shared / name, private / name
        if link.is_symlink() or link.exists() or not _fresh(pickled, Path(source)):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(pickled)
        linked += 1
    return linked


def _fresh(pickled: Path, source: Path) -> bool:
    """Whether parso would use ``pickled`` for ``source`` (not older than it)."""
    try:
        return source.stat().st_mtime <= pickled.stat().st_mtime
    except OSError:
        return False


def build(folder: Path, sources: Sequence[str] = WARM_SOURCES) -> None:
    """Fill ``folder`` with jedi's pickles of what ``sources`` use (completed at their end),
    the file each was parsed from (``SOURCES``) and the completion details (``COMPLETIONS``)."""
    # Imported here: only the interpreter that builds the cache needs jedi, not the agent.
    jedi = importlib.import_module("jedi")
    parso_cache = importlib.import_module("parso.cache")
    folder.mkdir(parents=True, exist_ok=True)
    jedi.settings.cache_directory = str(folder)
    # As pylsp sets it (numpy is imported, not read from its stubs): the same kinds and
    # documentation as the server computes.
    defaults = importlib.import_module("pylsp.workspace").DEFAULT_AUTO_IMPORT_MODULES
    jedi.settings.auto_import_modules = defaults
    for source in sources:
        for completion in jedi.Script(source).complete():
            # pylsp gives every item its kind: inferring it parses the modules that define it
            # (and, for numpy, pandas and matplotlib, fills jedi's completion cache).
            _ = completion.type
    parsed = {}
    for grammar, items in parso_cache.parser_cache.items():
        for path in items:
            if path is None:
                continue
            pickled = Path(parso_cache._get_hashed_path(grammar, path, cache_path=folder))
            if pickled.is_file():
                parsed[str(pickled.relative_to(folder))] = str(path)
    (folder / SOURCES).write_text(json.dumps(parsed, indent=0, sort_keys=True))
    details = importlib.import_module("jedi.api.completion_cache")._cache
    with (folder / COMPLETIONS).open("wb") as f:
        pickle.dump(details, f, pickle.HIGHEST_PROTOCOL)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kernel_image.lsp_cache [FOLDER]``: build the cache anew."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=shared_cache_dir(),
        help="where to write it (default: share/jedi-cache in this interpreter's prefix)",
    )
    options = parser.parse_args(argv)
    # From scratch: a pickle of a file the venv no longer has, or older than it, must not stay.
    shutil.rmtree(options.folder, ignore_errors=True)
    build(options.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
