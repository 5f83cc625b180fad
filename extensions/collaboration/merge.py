"""Changes made to a file another way, turned into CRDT edits that merge with live typing."""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Any

from pycrdt import Doc, Text

TEXT_NAME = "source"
"""The name of the file's ``Y.Text`` in every document (jupyter-collaboration's)."""


def text_of(doc: Doc[Any]) -> Text:
    """The document's text."""
    text: Text = doc.get(TEXT_NAME, type=Text)
    return text


def seed(content: str) -> bytes:
    """The first update of a document whose text is ``content``."""
    doc: Doc[Any] = Doc()
    text_of(doc).insert(0, content)
    return doc.get_update()


def diff_update(saved_state: bytes, new_text: str) -> tuple[bytes, bytes]:
    """Edits that turn the document at ``saved_state`` into ``new_text``.

    Returns ``(update, state)``: the update holding only those edits, which applied to a live
    document keeps the typing made there since the save (the edits touch only what changed
    on disk), and the document's whole state after them.
    """
    doc: Doc[Any] = Doc()
    doc.apply_update(saved_state)
    text = text_of(doc)
    before = doc.get_state()
    old = str(text)
    # Replaced from the end backwards, so that the offsets still to come stay valid. The
    # diff is of characters; pycrdt's offsets count UTF-8 bytes.
    opcodes = SequenceMatcher(None, old, new_text, autojunk=False).get_opcodes()
    with doc.transaction():
        for tag, i1, i2, j1, j2 in reversed(opcodes):
            start = len(old[:i1].encode())
            if tag in {"replace", "delete"}:
                del text[start : start + len(old[i1:i2].encode())]
            if tag in {"replace", "insert"}:
                text.insert(start, new_text[j1:j2])
    return doc.get_update(before), doc.get_update()
