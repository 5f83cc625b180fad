"""Contents models as Jupyter's API gives them: built from item rows (``items``), with a file's
content in them, and a file's bytes read back from a saved model. No I/O.

A listing inlines its models (no ``model()`` call per child): listing 10,000 files is a hot path.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from base64 import decodebytes, encodebytes
from datetime import datetime
from typing import Any

from extensions.workspaces import items
from platform_server.errors import PlatformError


def model(
    path: str,
    kind: str,
    size: int | None,
    mimetype: str | None,
    created: datetime,
    modified: datetime,
) -> dict[str, Any]:
    """A contents model without content, as Jupyter's ``get(content=False)`` makes it."""
    return {
        "name": path.rpartition("/")[2],
        "path": path,
        "type": kind,
        "writable": True,
        "created": created,
        "last_modified": modified,
        "content": None,
        "format": None,
        "mimetype": mimetype,
        "size": None if kind == "directory" else size,
        "hash": None,
        "hash_algorithm": None,
    }


def row_model(row: items.ItemRow) -> dict[str, Any]:
    return model(
        row["path"],
        row["type"],
        row["size"],
        row["mimetype"],
        row["created"],
        row["last_modified"],
    )


def file_content(model: dict[str, Any], data: bytes, format: str | None) -> None:
    """Fill in a file's content as Jupyter does: text if asked or if it decodes, else base64."""
    if format in {None, "text"}:
        try:
            model["content"] = data.decode("utf-8")
            model["format"] = "text"
        except UnicodeDecodeError:
            if format == "text":
                msg = f"{model['path']} is not UTF-8 encoded"
                raise PlatformError(400, msg, reason="bad format") from None
    if model["content"] is None:
        model["content"] = encodebytes(data).decode("ascii")
        model["format"] = "base64"
    if model["mimetype"] is None:
        text = model["format"] == "text"
        model["mimetype"] = "text/plain" if text else "application/octet-stream"


@functools.lru_cache(maxsize=16)
def _hidden_by_globs(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for all of ``hide_globs`` (fnmatch per name and glob is 20x slower)."""
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def listing(
    parent: str, rows: list[Any], *, allow_hidden: bool, hide_globs: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Models of a directory's children (hidden and ``hide_globs`` names left out)."""
    prefix = f"{parent}/" if parent else ""
    show_hidden = allow_hidden
    hidden = _hidden_by_globs(hide_globs)
    listing: list[dict[str, Any]] = []
    append = listing.append
    for name, kind, size, mimetype, created, modified in rows:
        if (not show_hidden and name.startswith(".")) or (hidden and hidden.match(name)):
            continue
        # ``model``'s dict, written out: a call per row costs 15% of a 10,000-file listing.
        append(
            {
                "name": name,
                "path": prefix + name,
                "type": kind,
                "writable": True,
                "created": created,
                "last_modified": modified,
                "content": None,
                "format": None,
                "mimetype": mimetype,
                "size": None if kind == "directory" else size,
                "hash": None,
                "hash_algorithm": None,
            }
        )
    return listing


def decode(content: Any, format: str | None, path: str) -> bytes:
    """A file's bytes from a model's content, as Jupyter's ``_save_file`` decodes it."""
    if format not in {"text", "base64"}:
        msg = "Must specify format of file contents as 'text' or 'base64'"
        raise PlatformError(400, msg)
    if not isinstance(content, str):
        msg = f"The content of {path} must be a string."
        raise PlatformError(400, msg)
    try:
        if format == "text":
            return content.encode("utf-8")
        return decodebytes(content.encode("ascii"))
    except Exception as e:
        msg = f"Encoding error saving {path}: {e}"
        raise PlatformError(400, msg) from e
