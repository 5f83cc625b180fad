"""Notebooks as the contents manager stores them: bytes exactly as Jupyter writes them, parsed
as Jupyter reads them, and their shape checked before anything signs them."""

from __future__ import annotations

from typing import Any

import nbformat
from nbformat import NotebookNode

from platform_server.errors import PlatformError

# The deepest nesting of lists and objects in a saved notebook: nbformat, the notary and
# jsonschema recurse, and a RecursionError while signing empties jupyter's signature store.
MAX_NOTEBOOK_DEPTH = 100


def to_bytes(nb: NotebookNode, validation_error: dict[str, Any]) -> bytes:
    """Serialise a notebook exactly as Jupyter writes it to disk (validating it on the way)."""
    text: str = nbformat.writes(  # type: ignore[no-untyped-call]
        nb, version=nbformat.NO_CONVERT, capture_validation_error=validation_error
    )
    if not text.endswith("\n"):
        text += "\n"
    return text.encode("utf-8")


def read(data: bytes, path: str, validation_error: dict[str, Any]) -> NotebookNode:
    """Parse stored notebook bytes as Jupyter does; a 400 error when they are no notebook."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"{path} is not UTF-8 encoded"
        raise PlatformError(400, msg, reason="bad format") from None
    try:
        nb: NotebookNode = nbformat.reads(  # type: ignore[no-untyped-call]
            text, as_version=4, capture_validation_error=validation_error
        )
    except Exception as e:
        msg = f"Unreadable Notebook: {path} {e!r}"
        raise PlatformError(400, msg) from e
    return nb


def is_int(value: Any) -> bool:
    """Whether a JSON value is an integer (true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests lists and objects more than ``limit`` levels deep
    (measured without recursion: that is what it protects against)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def shape_problem(content: Any) -> str | None:
    """What keeps ``content`` from being signed and written as an nbformat 4 notebook, or None.

    Checked before signing: the notary reads cells, metadata and outputs without checks, and
    jupyter_server's ``check_and_sign`` takes any error there for a broken signature store
    (which it then empties). The schema itself is checked later, as Jupyter does (a notebook
    that fails it is saved, with a validation message).
    """
    if not isinstance(content, dict):
        return "it must be a JSON object"
    if nested_deeper_than(content, MAX_NOTEBOOK_DEPTH):
        return f"it is nested more than {MAX_NOTEBOOK_DEPTH} levels deep"
    if content.get("nbformat") != 4 or not is_int(content.get("nbformat")):
        return "'nbformat' must be 4"
    if not is_int(content.get("nbformat_minor")):
        return "'nbformat_minor' must be an integer"
    if not isinstance(content.get("metadata"), dict):
        return "'metadata' must be an object"
    cells = content.get("cells")
    if not isinstance(cells, list):
        return "'cells' must be a list"
    for cell in cells:
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            return "every cell must be an object with a 'cell_type'"
        if not isinstance(cell.get("metadata"), dict):
            return "every cell must have a 'metadata' object"
        if cell["cell_type"] == "code":
            outputs = cell.get("outputs")
            if not isinstance(outputs, list) or not all(
                isinstance(output, dict) and isinstance(output.get("output_type"), str)
                for output in outputs
            ):
                return "a code cell's 'outputs' must be a list of objects with an 'output_type'"
    return None
