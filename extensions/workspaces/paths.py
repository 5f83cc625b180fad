"""Workspace paths: the one canonical form of every path stored, and the checks that make it."""

from __future__ import annotations

import re
import unicodedata

from platform_server.errors import InvalidPath

# Limits of common Linux file systems, so that every stored tree can be written to a sandbox.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

# C0 controls, DEL and C1 controls (Unicode category Cc): never part of a file name we accept.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Bidirectional formatting characters (embeddings, overrides, isolates, marks): they make a
# name display as another ("invoice\u202efdp.exe" shows as "invoiceexe.pdf").
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def canonical(path: str) -> str:
    """The canonical form of an API path; ``InvalidPath`` when it cannot be one.

    Leading and trailing '/' are dropped as Jupyter does, and the result is NFC-normalised, so
    "é" typed on macOS (NFD) and on Linux (NFC) name the same file. Refused: empty, '.' and '..'
    segments, control and bidirectional formatting characters, text that is not valid Unicode,
    a segment longer than ``MAX_NAME_BYTES`` or a path longer than ``MAX_PATH_BYTES`` (UTF-8
    bytes). The root is ''.
    """
    path = path.strip("/")
    if not path:
        return ""
    if not path.isascii():
        try:
            path = unicodedata.normalize("NFC", path)
            size = len(path.encode("utf-8"))
        except UnicodeError:
            msg = f"Invalid path {path!r}: it is not valid Unicode text."
            raise InvalidPath(msg) from None
        if _BIDI.search(path):
            msg = f"Invalid path {path!r}: bidirectional formatting characters are not allowed."
            raise InvalidPath(msg)
    else:
        size = len(path)
    if _CONTROL.search(path):
        msg = f"Invalid path {path!r}: control characters are not allowed in names."
        raise InvalidPath(msg)
    if size > MAX_PATH_BYTES:
        msg = f"Invalid path: it is {size} bytes long; the limit is {MAX_PATH_BYTES}."
        raise InvalidPath(msg)
    for name in path.split("/"):
        if name in {"", ".", ".."}:
            msg = f"Invalid path {path!r}: empty, '.' and '..' segments are not allowed."
            raise InvalidPath(msg)
        if len(name) > MAX_NAME_BYTES // 4 and len(name.encode("utf-8")) > MAX_NAME_BYTES:
            msg = f"Invalid path {path!r}: a name is longer than {MAX_NAME_BYTES} bytes."
            raise InvalidPath(msg)
    return path


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a canonical, non-root path; the parent of a top-level item is ''."""
    parent, _, name = path.rpartition("/")
    return parent, name


def join(parent: str, name: str) -> str:
    """The path of ``name`` inside the directory ``parent`` (both canonical)."""
    return f"{parent}/{name}" if parent else name


def is_hidden(path: str) -> bool:
    """Whether any segment of a canonical path starts with '.', as Jupyter hides them."""
    return path.startswith(".") or "/." in path
