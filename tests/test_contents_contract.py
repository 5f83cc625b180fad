"""The contents contract, run on jupyter_server's AsyncLargeFileManager and on ours.

Jupyter's manager proves each contract test right; PostgresContentsManager must pass it too.
What Jupyter does not have (limits, path rules, several checkpoints, If-Match, atomic concurrent
saves) is tested on ours alone: the ``test_postgres_only_*`` tests at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import mimetypes
import os
import unicodedata
import uuid
from base64 import decodebytes, encodebytes
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import nbformat
import psycopg
import pytest
from jupyter_core.utils import ensure_async
from jupyter_server.base.call_context import CallContext
from jupyter_server.services.contents.handlers import validate_model
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from jupyter_server.services.contents.manager import AsyncContentsManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import Application, HTTPError, RequestHandler

from extensions.workspaces.contents import PostgresContentsManager
from platform_server.db import Database
from tests.waiting import until
from tests.workspace_fixtures import create_workspace, manager_config

pytestmark = pytest.mark.usefixtures("jp_environ")

MiB = 1024 * 1024
ManagerFactory = Callable[..., AsyncContentsManager]


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=["jupyter", "postgres"])
def make_cm(request: pytest.FixtureRequest, tmp_path: Path) -> ManagerFactory:
    """Make contents managers of the backend under test (traits common to both as keywords)."""
    if request.param == "postgres":
        return request.getfixturevalue("make_pg")  # type: ignore[no-any-return]
    root = tmp_path / "root"
    root.mkdir()

    def make(**traits: Any) -> AsyncContentsManager:
        # No trash: deleting is permanent and recursive, as in ours.
        return AsyncLargeFileManager(
            root_dir=str(root),
            delete_to_trash=False,
            always_delete_dir=True,
            config=manager_config(),
            **traits,
        )

    return make


@pytest.fixture
def cm(make_cm: ManagerFactory) -> AsyncContentsManager:
    """A contents manager of the backend under test, with Jupyter's default settings."""
    return make_cm()


# --- helpers -------------------------------------------------------------------------------


async def save_text(cm: AsyncContentsManager, path: str, text: str) -> dict[str, Any]:
    model = await cm.save({"type": "file", "format": "text", "content": text}, path)
    validate_model(model)
    return model  # type: ignore[no-any-return]


async def save_bytes(cm: AsyncContentsManager, path: str, data: bytes) -> dict[str, Any]:
    model = {"type": "file", "format": "base64", "content": encodebytes(data).decode("ascii")}
    return await cm.save(model, path)  # type: ignore[no-any-return]


async def mkdir(cm: AsyncContentsManager, path: str) -> dict[str, Any]:
    return await cm.save({"type": "directory"}, path)  # type: ignore[no-any-return]


async def read(cm: AsyncContentsManager, path: str) -> bytes:
    model = await cm.get(path, type="file", format="base64")
    return decodebytes(model["content"].encode("ascii"))


async def exists(cm: AsyncContentsManager, path: str) -> bool:
    """Whether anything is at ``path`` (Jupyter's file manager answers this synchronously)."""
    return bool(await ensure_async(cm.exists(path)))


async def names(cm: AsyncContentsManager, path: str = "") -> set[str]:
    model = await cm.get(path)
    validate_model(model, expect_content=True)
    return {child["name"] for child in model["content"]}


async def status(awaitable: Any) -> int:
    """The HTTP status of the error an awaitable raises."""
    with pytest.raises(HTTPError) as info:
        await awaitable
    return info.value.status_code


def assert_times(model: dict[str, Any]) -> None:
    for key in ("created", "last_modified"):
        assert isinstance(model[key], datetime)
        assert model[key].utcoffset() is not None, f"{key} is not timezone-aware"


# --- files ---------------------------------------------------------------------------------


async def test_root_is_an_empty_directory(cm: AsyncContentsManager) -> None:
    model = await cm.get("")
    validate_model(model, expect_content=True)
    assert (model["name"], model["path"], model["type"]) == ("", "", "directory")
    assert model["content"] == []
    assert model["format"] == "json"
    assert await cm.dir_exists("")
    assert not await cm.file_exists("")


async def test_text_file_round_trip(cm: AsyncContentsManager) -> None:
    saved = await save_text(cm, "hello.txt", "héllo\n")
    assert saved["name"] == "hello.txt"
    assert saved["path"] == "hello.txt"
    assert saved["type"] == "file"
    assert saved["mimetype"] == "text/plain"
    assert saved["size"] == len("héllo\n".encode())
    assert saved["writable"] is True
    assert saved["content"] is None
    assert_times(saved)

    model = await cm.get("hello.txt")
    validate_model(model, expect_content=True)
    assert (model["content"], model["format"], model["mimetype"]) == (
        "héllo\n",
        "text",
        "text/plain",
    )
    assert model["hash"] is None
    assert model["last_modified"] == saved["last_modified"]
    assert_times(model)

    bare = await cm.get("hello.txt", content=False)
    validate_model(bare)
    assert (bare["content"], bare["format"]) == (None, None)
    assert await cm.file_exists("hello.txt")
    assert not await cm.dir_exists("hello.txt")
    assert await exists(cm, "/hello.txt/")


async def test_binary_file(cm: AsyncContentsManager) -> None:
    data = bytes(range(256)) * 3
    saved = await save_bytes(cm, "blob", data)
    assert saved["size"] == len(data)
    assert saved["mimetype"] is None  # no guess from the name, and no content read

    model = await cm.get("blob")
    assert model["format"] == "base64"
    assert model["content"] == encodebytes(data).decode("ascii")
    assert model["mimetype"] == "application/octet-stream"
    assert await read(cm, "blob") == data
    assert await status(cm.get("blob", format="text")) == 400


async def test_text_file_as_base64_and_untyped_text(cm: AsyncContentsManager) -> None:
    await save_text(cm, "notes", "just text")
    model = await cm.get("notes", format="base64")
    assert model["format"] == "base64"
    assert decodebytes(model["content"].encode()) == b"just text"
    assert model["mimetype"] == "application/octet-stream"
    model = await cm.get("notes")
    assert (model["format"], model["mimetype"]) == ("text", "text/plain")


async def test_mimetypes_are_guessed_like_jupyter(cm: AsyncContentsManager) -> None:
    for name in ("a.py", "b.json", "c.csv", "d.html", "e.png", "f.tar.gz", "g.md"):
        await save_text(cm, name, "x")
        expected = mimetypes.guess_type("/" + name)[0]
        assert (await cm.get(name, content=False))["mimetype"] == expected, name
    listing = {child["name"]: child["mimetype"] for child in (await cm.get(""))["content"]}
    assert listing["a.py"] == mimetypes.guess_type("a.py")[0]


async def test_hash_on_request(cm: AsyncContentsManager) -> None:
    await save_text(cm, "h.txt", "hash me")
    expected = hashlib.sha256(b"hash me").hexdigest()
    for content in (True, False):
        model = await cm.get("h.txt", content=content, require_hash=True)
        validate_model(model, expect_content=content, expect_hash=True)
        assert (model["hash"], model["hash_algorithm"]) == (expected, "sha256")


async def test_save_replaces_and_keeps_created(cm: AsyncContentsManager) -> None:
    first = await save_text(cm, "a.txt", "one")
    await until(lambda: datetime.now(UTC) > first["last_modified"], "the clock moves on")
    second = await save_text(cm, "a.txt", "two, longer")
    assert second["size"] == len("two, longer")
    assert second["last_modified"] > first["last_modified"]
    assert (await cm.get("a.txt"))["content"] == "two, longer"


async def test_last_modified_increases_on_rapid_saves(cm: AsyncContentsManager) -> None:
    stamps = [(await save_text(cm, "fast.txt", str(i)))["last_modified"] for i in range(20)]
    assert stamps == sorted(stamps)
    assert stamps[-1] > stamps[0]


async def test_invalid_save_models_are_refused(cm: AsyncContentsManager) -> None:
    assert await status(cm.save({"content": "x", "format": "text"}, "a.txt")) == 400
    assert await status(cm.save({"type": "file", "format": "text"}, "a.txt")) == 400
    assert await status(cm.save({"type": "file", "content": "x"}, "a.txt")) == 400
    model = {"type": "file", "content": "x", "format": "hex"}
    assert await status(cm.save(model, "a.txt")) == 400
    model = {"type": "file", "content": "YWJj=x", "format": "base64"}
    assert await status(cm.save(model, "a.txt")) == 400
    assert not await exists(cm, "a.txt")


async def test_missing_paths(cm: AsyncContentsManager) -> None:
    assert await status(cm.get("missing.txt")) == 404
    assert await status(cm.get("missing/dir")) == 404
    assert await status(cm.delete("missing.txt")) == 404
    assert await status(cm.rename("missing.txt", "other.txt")) == 404
    assert not await exists(cm, "missing.txt")


async def test_saving_into_a_missing_directory_is_refused(cm: AsyncContentsManager) -> None:
    # Jupyter answers 500 (the OS error); ours 404. Both write nothing.
    assert await status(save_text(cm, "nope/a.txt", "x")) in {404, 500}
    assert not await exists(cm, "nope")
    assert not await exists(cm, "nope/a.txt")


async def test_files_and_directories_do_not_replace_each_other(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "d")
    await save_text(cm, "d/inside.txt", "x")
    await save_text(cm, "f.txt", "x")
    # Jupyter answers 500 for a file over a directory (the OS error); ours 400.
    assert await status(save_text(cm, "d", "x")) in {400, 500}
    assert await status(mkdir(cm, "f.txt")) == 400
    assert await cm.dir_exists("d")
    assert await names(cm, "d") == {"inside.txt"}
    assert (await cm.get("f.txt"))["content"] == "x"
    again = await mkdir(cm, "d")  # an existing directory is fine
    assert again["type"] == "directory"


async def test_unicode_names(cm: AsyncContentsManager) -> None:
    folder = "données élève"
    name = "naïve 日本語 🐍.txt"
    await mkdir(cm, folder)
    saved = await save_text(cm, f"{folder}/{name}", "ünïcödé")
    assert (saved["name"], saved["path"]) == (name, f"{folder}/{name}")
    assert await names(cm) == {folder}
    assert await names(cm, folder) == {name}
    assert (await cm.get(f"{folder}/{name}"))["content"] == "ünïcödé"


async def test_deep_tree(cm: AsyncContentsManager) -> None:
    path = ""
    for level in range(40):
        path = f"{path}/level{level}".strip("/")
        await mkdir(cm, path)
    await save_text(cm, f"{path}/leaf.txt", "deep")
    assert (await cm.get(f"{path}/leaf.txt"))["content"] == "deep"
    model = await cm.get(path.rpartition("/")[0])
    assert [child["path"] for child in model["content"]] == [path]
    await cm.delete("level0")
    assert await names(cm) == set()
    assert not await exists(cm, f"{path}/leaf.txt")


# --- notebooks -----------------------------------------------------------------------------


SAMPLE = new_notebook(cells=[new_markdown_cell("# Title"), new_code_cell("print('hi')")])


def sample_notebook() -> nbformat.NotebookNode:
    return nbformat.from_dict(SAMPLE)


def untrusted(nb: dict[str, Any]) -> dict[str, Any]:
    """A notebook as read, without the 'trusted' flags Jupyter adds to its cells."""
    copy = nbformat.from_dict(nb)
    for cell in copy.cells:
        cell.metadata.pop("trusted", None)
    return copy  # type: ignore[no-any-return]


async def test_notebook_round_trip(cm: AsyncContentsManager) -> None:
    nb = sample_notebook()
    saved = await cm.save({"type": "notebook", "content": nb}, "nb.ipynb")
    validate_model(saved)
    assert (saved["type"], saved["mimetype"], saved["format"]) == ("notebook", None, None)
    assert "message" not in saved
    # Stored exactly as Jupyter writes notebooks to disk.
    expected = (nbformat.writes(nb) + "\n").encode()
    assert saved["size"] == len(expected)
    hashed = await cm.get("nb.ipynb", content=False, require_hash=True)
    assert hashed["hash"] == hashlib.sha256(expected).hexdigest()

    model = await cm.get("nb.ipynb")
    validate_model(model, expect_content=True)
    assert (model["type"], model["format"], model["mimetype"]) == ("notebook", "json", None)
    assert untrusted(model["content"]) == nb
    as_file = await cm.get("nb.ipynb", type="file")
    assert as_file["type"] == "file"
    assert as_file["format"] == "text"
    assert nbformat.reads(as_file["content"], as_version=4) == nb


async def test_notebook_validation_message(cm: AsyncContentsManager) -> None:
    nb = new_notebook()
    # Markdown cells have no outputs: nbformat's schema refuses this one.
    nb.cells.append(
        nbformat.from_dict(
            {"id": "m1", "cell_type": "markdown", "metadata": {}, "source": "x", "outputs": []}
        )
    )
    saved = await cm.save({"type": "notebook", "content": nb}, "bad.ipynb")
    assert saved["message"].startswith("Notebook validation failed")
    assert await cm.file_exists("bad.ipynb")  # saved nonetheless, as Jupyter does


async def test_unreadable_notebook(cm: AsyncContentsManager) -> None:
    await save_text(cm, "broken.ipynb", "{ not json")
    listed = (await cm.get(""))["content"]
    assert [(child["name"], child["type"]) for child in listed] == [("broken.ipynb", "notebook")]
    assert await status(cm.get("broken.ipynb")) == 400
    assert (await cm.get("broken.ipynb", type="file"))["content"] == "{ not json"
    await save_text(cm, "script.py", "{}")
    assert await status(cm.get("script.py", type="notebook")) == 400


async def test_saving_a_notebook_makes_its_first_checkpoint(cm: AsyncContentsManager) -> None:
    await cm.save({"type": "notebook", "content": sample_notebook()}, "nb.ipynb")
    assert len(await cm.list_checkpoints("nb.ipynb")) == 1
    await save_text(cm, "plain.txt", "x")
    assert await cm.list_checkpoints("plain.txt") == []


# --- directories ---------------------------------------------------------------------------


async def test_directory_listing(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "d")
    await mkdir(cm, "d/sub")
    await save_text(cm, "d/a.txt", "aaa")
    await cm.save({"type": "notebook", "content": sample_notebook()}, "d/n.ipynb")
    model = await cm.get("d")
    validate_model(model, expect_content=True)
    assert (model["type"], model["size"], model["mimetype"]) == ("directory", None, None)
    children = {child["name"]: child for child in model["content"]}
    assert set(children) == {"sub", "a.txt", "n.ipynb"}
    for child in children.values():
        validate_model(child)
        assert child["path"] == f"d/{child['name']}"
        assert child["content"] is None
        assert_times(child)
    assert (children["sub"]["type"], children["sub"]["size"]) == ("directory", None)
    assert (children["a.txt"]["type"], children["a.txt"]["size"]) == ("file", 3)
    assert children["a.txt"]["mimetype"] == "text/plain"
    assert (children["n.ipynb"]["type"], children["n.ipynb"]["mimetype"]) == ("notebook", None)
    bare = await cm.get("d", content=False)
    assert (bare["content"], bare["format"]) == (None, None)


async def test_type_mismatch(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "d")
    await save_text(cm, "f.txt", "x")
    assert await status(cm.get("d", type="file")) == 400
    assert await status(cm.get("d", type="notebook")) == 400
    assert await status(cm.get("f.txt", type="directory")) == 400


async def test_hide_globs_leave_names_out_of_listings(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "__pycache__")
    for name in ("mod.pyc", "backup~", "kept.py"):
        await save_text(cm, name, "x")
    assert await names(cm) == {"kept.py"}
    assert (await cm.get("mod.pyc"))["content"] == "x"


async def test_prefix_safety(cm: AsyncContentsManager) -> None:
    """Siblings that share a prefix, and names with LIKE metacharacters, never mix."""
    dirs = ["dir", "dir2", "dir.x", "dir0", "d%", "d_", "d\\", "d"]
    for name in dirs:
        await mkdir(cm, name)
        await save_text(cm, f"{name}/own.txt", name)
        await mkdir(cm, f"{name}/sub")
        await save_text(cm, f"{name}/sub/deep.txt", name)
    for name in dirs:
        listing = (await cm.get(name))["content"]
        assert {child["path"] for child in listing} == {f"{name}/own.txt", f"{name}/sub"}

    await cm.rename("d", "moved")
    await cm.rename("dir", "moved-dir")
    await cm.delete("d_")
    await cm.delete("d%")
    assert await names(cm) == {"dir2", "dir.x", "dir0", "d\\", "moved", "moved-dir"}
    for name in ("dir2", "dir.x", "dir0", "d\\"):
        assert (await cm.get(f"{name}/sub/deep.txt"))["content"] == name
    assert (await cm.get("moved/sub/deep.txt"))["content"] == "d"
    assert (await cm.get("moved-dir/own.txt"))["content"] == "dir"


# --- new, untitled, copy -------------------------------------------------------------------


async def test_new_untitled_names(cm: AsyncContentsManager) -> None:
    made = [(await cm.new_untitled(type="file", ext=".txt"))["path"] for _ in range(3)]
    assert made == ["untitled.txt", "untitled1.txt", "untitled2.txt"]
    assert (await cm.new_untitled(type="file"))["path"] == "untitled"
    assert [(await cm.new_untitled(ext=".ipynb"))["path"] for _ in range(2)] == [
        "Untitled.ipynb",
        "Untitled1.ipynb",
    ]
    assert [(await cm.new_untitled(type="directory"))["path"] for _ in range(2)] == [
        "Untitled Folder",
        "Untitled Folder 1",
    ]
    inner = await cm.new_untitled("Untitled Folder", type="file", ext=".py")
    assert inner["path"] == "Untitled Folder/untitled.py"
    notebook = await cm.get("Untitled.ipynb")
    assert notebook["content"] == new_notebook()
    assert await status(cm.new_untitled("missing", type="file")) == 404


async def test_new_with_a_path(cm: AsyncContentsManager) -> None:
    empty = await cm.new(path="empty.txt")
    assert (empty["type"], empty["size"]) == ("file", 0)
    notebook = await cm.new(path="fresh.ipynb")
    assert notebook["type"] == "notebook"
    folder = await cm.new({"type": "directory"}, "folder")
    assert folder["type"] == "directory"


async def test_copy_names(cm: AsyncContentsManager) -> None:
    await save_text(cm, "a.txt", "A")
    await save_text(cm, "x.tar.gz", "X")
    await cm.save({"type": "notebook", "content": sample_notebook()}, "n.ipynb")
    await mkdir(cm, "other")
    assert (await cm.copy("a.txt"))["path"] == "a-Copy1.txt"
    assert (await cm.copy("a.txt"))["path"] == "a-Copy2.txt"
    assert (await cm.copy("a-Copy1.txt"))["path"] == "a-Copy3.txt"
    assert (await cm.copy("x.tar.gz"))["path"] == "x-Copy1.tar.gz"
    assert (await cm.copy("n.ipynb"))["path"] == "n-Copy1.ipynb"
    assert (await cm.copy("a.txt", "other"))["path"] == "other/a.txt"
    assert (await cm.copy("a.txt", "other"))["path"] == "other/a-Copy1.txt"
    named = await cm.copy("a.txt", "other/b.txt")
    assert (named["path"], named["size"]) == ("other/b.txt", 1)
    assert (await cm.get("other/b.txt"))["content"] == "A"
    assert untrusted((await cm.get("n-Copy1.ipynb"))["content"]) == sample_notebook()
    assert await status(cm.copy("a.txt", "missing/b.txt")) == 404
    assert await status(cm.copy("missing.txt")) == 404


async def test_copy_directory(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "d")
    await mkdir(cm, "d/sub")
    await save_text(cm, "d/sub/f.txt", "F")
    # JupyterLab's "Duplicate" posts the copy to the parent directory.
    copied = await cm.copy("d", "")
    assert (copied["path"], copied["type"]) == ("d-Copy1", "directory")
    assert (await cm.get("d-Copy1/sub/f.txt"))["content"] == "F"
    assert (await cm.get("d/sub/f.txt"))["content"] == "F"
    await save_text(cm, "d-Copy1/sub/f.txt", "changed")
    assert (await cm.get("d/sub/f.txt"))["content"] == "F"


async def test_copy_directory_into_missing_folders(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "d")
    await save_text(cm, "d/f.txt", "F")
    await save_text(cm, "file.txt", "not a folder")
    # A directory copied to a folder that does not exist yet: the folder is made, as
    # jupyter_server's own test_copy_dir expects (copytree makes every missing folder).
    copied = await cm.copy("d", "new")
    assert (copied["path"], copied["type"]) == ("new/d", "directory")
    assert (await cm.get("new/d/f.txt"))["content"] == "F"
    deep = await cm.copy("d", "a/b")
    assert deep["path"] == "a/b/d"
    assert await names(cm) == {"a", "d", "file.txt", "new"}
    assert (await cm.get("a"))["type"] == "directory"
    assert (await cm.get("a/b/d/f.txt"))["content"] == "F"
    # Into a file: refused, and nothing is made.
    assert await status(cm.copy("d", "file.txt/inner")) == 400
    assert (await cm.get("file.txt"))["content"] == "not a folder"
    assert await names(cm) == {"a", "d", "file.txt", "new"}


# --- rename and delete ---------------------------------------------------------------------


async def test_rename_file(cm: AsyncContentsManager) -> None:
    await save_text(cm, "a.txt", "A")
    await save_text(cm, "b.txt", "B")
    await mkdir(cm, "d")
    await cm.rename("a.txt", "d/c.txt")
    assert not await exists(cm, "a.txt")
    assert (await cm.get("d/c.txt"))["content"] == "A"
    # Never overwrite: 409, and both files intact.
    assert await status(cm.rename("b.txt", "d/c.txt")) == 409
    assert (await cm.get("b.txt"))["content"] == "B"
    assert (await cm.get("d/c.txt"))["content"] == "A"
    assert await status(cm.rename("b.txt", "missing/b.txt")) == 404
    await cm.rename("b.txt", "b.txt")  # to itself: nothing to do
    assert (await cm.get("b.txt"))["content"] == "B"
    renamed = await cm.update({"path": "e.py"}, "b.txt")
    assert (renamed["path"], renamed["mimetype"]) == ("e.py", mimetypes.guess_type("e.py")[0])


async def test_rename_file_to_notebook_changes_type(cm: AsyncContentsManager) -> None:
    nb = sample_notebook()
    await save_text(cm, "draft.json", nbformat.writes(nb))
    await cm.rename("draft.json", "draft.ipynb")
    model = await cm.get("draft.ipynb")
    assert (model["type"], untrusted(model["content"])) == ("notebook", nb)
    await cm.rename("draft.ipynb", "draft.txt")
    assert (await cm.get("draft.txt", content=False))["type"] == "file"


async def test_rename_directory_with_1000_files(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "big")
    await mkdir(cm, "big/inner")
    await asyncio.gather(*(save_text(cm, f"big/f{i:04}.txt", str(i)) for i in range(1000)))
    await save_text(cm, "big/inner/deep.txt", "deep")
    await cm.create_checkpoint("big/inner/deep.txt")
    await save_text(cm, "big/inner/deep.txt", "changed")
    await mkdir(cm, "big2")

    await cm.rename("big", "renamed")
    assert not await exists(cm, "big")
    assert await names(cm) == {"renamed", "big2"}
    listing = await names(cm, "renamed")
    assert len(listing) == 1001
    assert (await cm.get("renamed/f0999.txt"))["content"] == "999"
    assert (await cm.get("renamed/inner/deep.txt"))["content"] == "changed"
    checkpoints = await cm.list_checkpoints("renamed/inner/deep.txt")
    assert len(checkpoints) == 1
    await cm.restore_checkpoint(checkpoints[0]["id"], "renamed/inner/deep.txt")
    assert (await cm.get("renamed/inner/deep.txt"))["content"] == "deep"


async def test_delete(cm: AsyncContentsManager) -> None:
    await mkdir(cm, "d")
    await mkdir(cm, "d/sub")
    await save_text(cm, "d/sub/f.txt", "x")
    await save_text(cm, "d2.txt", "keep")
    await cm.create_checkpoint("d/sub/f.txt")
    await cm.delete("d/sub/f.txt")
    assert not await exists(cm, "d/sub/f.txt")
    assert await cm.list_checkpoints("d/sub/f.txt") == []
    await save_text(cm, "d/sub/f.txt", "again")
    await cm.delete("d")  # recursive
    assert await names(cm) == {"d2.txt"}
    assert await status(cm.delete("")) == 400


# --- hidden files --------------------------------------------------------------------------


async def test_hidden_files(make_cm: ManagerFactory) -> None:
    open_cm = make_cm(allow_hidden=True)
    await save_text(open_cm, ".env", "SECRET=1")
    await mkdir(open_cm, ".config")
    await save_text(open_cm, ".config/app.txt", "x")
    await save_text(open_cm, "visible.txt", "x")
    assert await names(open_cm) == {".env", ".config", "visible.txt"}
    assert (await open_cm.get(".env"))["content"] == "SECRET=1"

    cm = make_cm()
    assert await cm.is_hidden(".env")
    assert await cm.is_hidden(".config/app.txt")
    assert await cm.is_hidden("a/.b/c")
    assert not await cm.is_hidden("visible.txt")
    assert await names(cm) == {"visible.txt"}
    assert await status(cm.get(".env")) == 404
    assert await status(cm.get(".config")) == 404
    assert await status(cm.get(".config/app.txt")) == 404
    # Jupyter's manager writes the file, then fails to read it back (404); ours refuses (400).
    assert await status(save_text(cm, ".new", "x")) in {400, 404}
    assert await status(mkdir(cm, ".newdir")) == 400
    assert await status(cm.delete(".env")) == 400
    assert await status(cm.rename("visible.txt", ".visible")) == 400
    assert await status(cm.rename(".env", "env")) == 400
    assert (await open_cm.get(".env"))["content"] == "SECRET=1"
    assert await open_cm.file_exists("visible.txt")


# --- checkpoints ---------------------------------------------------------------------------


async def test_checkpoints(cm: AsyncContentsManager) -> None:
    await save_text(cm, "a.txt", "version 1")
    assert await cm.list_checkpoints("a.txt") == []
    checkpoint = await cm.create_checkpoint("a.txt")
    assert isinstance(checkpoint["id"], str)
    assert isinstance(checkpoint["last_modified"], datetime)
    listed = await cm.list_checkpoints("a.txt")
    assert [c["id"] for c in listed] == [checkpoint["id"]]

    await save_text(cm, "a.txt", "version 2")
    await cm.restore_checkpoint(checkpoint["id"], "a.txt")
    assert (await cm.get("a.txt"))["content"] == "version 1"

    await cm.delete_checkpoint(checkpoint["id"], "a.txt")
    assert await cm.list_checkpoints("a.txt") == []
    assert await status(cm.delete_checkpoint(checkpoint["id"], "a.txt")) == 404


async def test_checkpoints_follow_renames(cm: AsyncContentsManager) -> None:
    await save_text(cm, "a.txt", "saved")
    await cm.create_checkpoint("a.txt")
    await cm.rename("a.txt", "b.txt")
    assert await cm.list_checkpoints("a.txt") == []
    [checkpoint] = await cm.list_checkpoints("b.txt")
    await save_text(cm, "b.txt", "changed")
    await cm.restore_checkpoint(checkpoint["id"], "b.txt")
    assert (await cm.get("b.txt"))["content"] == "saved"


# --- uploads and concurrency ---------------------------------------------------------------


async def upload(cm: AsyncContentsManager, path: str, data: bytes, chunk_size: int = MiB) -> Any:
    """Upload ``data`` as JupyterLab does for large files: chunks 1, 2, ..., then -1."""
    count = max(1, -(-len(data) // chunk_size))
    model = None
    for index in range(count):
        piece = data[index * chunk_size : (index + 1) * chunk_size]
        chunk = -1 if index == count - 1 else index + 1
        model = await cm.save(
            {
                "type": "file",
                "format": "base64",
                "chunk": chunk,
                "content": encodebytes(piece).decode("ascii"),
            },
            path,
        )
        validate_model(model)
        assert model["path"] == path
    return model


async def test_chunked_upload_of_50_mb(cm: AsyncContentsManager) -> None:
    data = os.urandom(50 * MiB)
    last = await upload(cm, "big.bin", data)
    assert last["size"] == len(data)
    model = await cm.get("big.bin", content=False, require_hash=True)
    assert model["size"] == len(data)
    assert model["hash"] == hashlib.sha256(data).hexdigest()
    assert await read(cm, "big.bin") == data


async def test_chunked_upload_reassembles_byte_exact(cm: AsyncContentsManager) -> None:
    data = os.urandom(3 * 1000 + 17)
    await upload(cm, "small.bin", data, chunk_size=1000)
    assert await read(cm, "small.bin") == data
    text = "línea\n" * 500
    await upload(cm, "text.txt", text.encode(), chunk_size=777)
    assert (await cm.get("text.txt"))["content"] == text


async def test_paths_outside_the_root_are_refused(cm: AsyncContentsManager) -> None:
    # Jupyter answers 404 (outside the root directory); ours 400 ('..' is never valid).
    assert await status(cm.get("../outside.txt")) in {400, 404}
    assert await status(save_text(cm, "../outside.txt", "x")) in {400, 404}
    assert await names(cm) == set()


# --- PostgreSQL only -----------------------------------------------------------------------
# Jupyter's file manager has no size limits, no quota, no path rules beyond its root, one
# checkpoint per file, and no If-Match: these tests run on PostgresContentsManager alone.


def bytes_used(database_url: str, workspace_id: uuid.UUID) -> tuple[int, int]:
    """``(workspaces.bytes_used, bytes stored)``: they must agree. Stored: the parts of every
    content a file, checkpoint or upload of the workspace refers to, each content once."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """SELECT w.bytes_used,
                      (SELECT coalesce(sum(octet_length(p.data)), 0) FROM content_parts p
                       WHERE p.content_id IN (
                           SELECT content_id FROM workspace_items WHERE workspace_id = w.id
                           UNION SELECT content_id FROM checkpoints WHERE workspace_id = w.id
                           UNION SELECT content_id FROM uploads WHERE workspace_id = w.id))
               FROM workspaces w WHERE w.id = %s""",
            [workspace_id],
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def count_rows(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


async def test_postgres_only_max_file_size(
    make_pg: Callable[..., PostgresContentsManager], database_url: str
) -> None:
    pg = make_pg(max_file_size=2000)
    await save_text(pg, "a.txt", "old")
    with pytest.raises(HTTPError) as info:
        await save_text(pg, "a.txt", "x" * 2001)
    assert info.value.status_code == 413
    assert "2.0 KiB" in info.value.log_message
    assert (await pg.get("a.txt"))["content"] == "old"

    # Chunked: refused at the chunk that crosses the limit; the chunks are dropped.
    await upload(pg, "up.bin", b"y" * 2000, chunk_size=700)
    assert await status(upload(pg, "a.txt", b"z" * 2001, chunk_size=700)) == 413
    assert (await pg.get("a.txt"))["content"] == "old"
    assert count_rows(database_url, "uploads") == 0
    used, stored = bytes_used(database_url, pg.workspace_id)  # type: ignore[arg-type]
    assert used == stored == 2003


async def test_postgres_only_workspace_quota(
    make_pg: Callable[..., PostgresContentsManager], database_url: str
) -> None:
    pg = make_pg(workspace_quota=10_000)
    ws = pg.workspace_id
    assert ws is not None
    await save_bytes(pg, "a.bin", b"a" * 6000)
    with pytest.raises(HTTPError) as info:
        await save_bytes(pg, "b.bin", b"b" * 6000)
    assert info.value.status_code == 413
    assert "quota" in info.value.log_message
    assert not await exists(pg, "b.bin")
    await save_bytes(pg, "a.bin", b"A" * 9000)  # a replacement only counts its growth
    assert bytes_used(database_url, ws) == (9000, 9000)
    assert await status(save_bytes(pg, "a.bin", b"A" * 10_001)) == 413
    assert await read(pg, "a.bin") == b"A" * 9000
    assert await status(upload(pg, "c.bin", b"c" * 3000, chunk_size=1000)) == 413
    copy = await pg.copy("a.bin")  # a copy shares the stored content: nothing more is stored
    assert bytes_used(database_url, ws) == (9000, 9000)
    await pg.delete(copy["path"])

    await pg.rename("a.bin", "moved.bin")
    await save_text(pg, "small.txt", "12345")
    await mkdir(pg, "d")
    await pg.copy("small.txt", "d")
    assert bytes_used(database_url, ws) == (9005, 9005)
    await pg.delete("moved.bin")
    await upload(pg, "up.bin", b"u" * 2500, chunk_size=1000)
    assert bytes_used(database_url, ws) == (2505, 2505)
    checkpoint = await pg.create_checkpoint("up.bin")
    await save_bytes(pg, "up.bin", b"")
    await pg.restore_checkpoint(checkpoint["id"], "up.bin")
    await pg.copy("d", "")
    assert bytes_used(database_url, ws) == (2505, 2505)
    await pg.delete("d")
    await pg.delete("small.txt")
    assert bytes_used(database_url, ws) == (2505, 2505)  # d-Copy1/small.txt keeps the 5 bytes
    await pg.delete("d-Copy1")
    assert bytes_used(database_url, ws) == (2500, 2500)


async def test_postgres_only_uploads_in_progress_count_against_the_quota(
    make_pg: Callable[..., PostgresContentsManager], database_url: str
) -> None:
    pg = make_pg(workspace_quota=10_000)
    chunk = {"type": "file", "format": "base64", "chunk": 1}
    await pg.save({**chunk, "content": encodebytes(b"x" * 6000).decode()}, "one.bin")
    other = {**chunk, "content": encodebytes(b"y" * 6000).decode()}
    assert await status(pg.save(other, "two.bin")) == 413
    assert count_rows(database_url, "uploads") == 1
    await pg.save({**chunk, "chunk": -1, "content": ""}, "one.bin")
    assert bytes_used(database_url, pg.workspace_id) == (6000, 6000)  # type: ignore[arg-type]
    assert count_rows(database_url, "uploads") == 0


async def test_postgres_only_moves_that_make_paths_too_long_are_refused(
    pg: PostgresContentsManager,
) -> None:
    path = "a"
    await mkdir(pg, path)
    for _ in range(20):
        path += "/" + "s" * 200
        await mkdir(pg, path)
    assert len(path.encode()) == 4021
    assert await status(pg.rename("a", "a" * 255)) == 400
    await mkdir(pg, "c" * 255)
    assert await status(pg.copy("a", "c" * 255)) == 400
    await pg.rename("a", "b")
    assert await pg.dir_exists("b/" + path.partition("/")[2])


async def test_postgres_only_invalid_paths_are_refused_and_write_nothing(
    pg: PostgresContentsManager, database_url: str
) -> None:
    await mkdir(pg, "d")
    await save_text(pg, "d/ok.txt", "x")
    bad = [
        "a/../b",
        "../a",
        "./a",
        "d/./ok.txt",
        "a//b",
        "a\x00b",
        "tab\there",
        "new\nline",
        "del\x7f",
        "c1\x85",
        "x" * 256,
        "é" * 128,  # 256 bytes in UTF-8
        "/".join(["y" * 200] * 21),  # over 4096 bytes
        "lone\udc80surrogate",
    ]
    for path in bad:
        assert await status(save_text(pg, path, "x")) == 400, path
        assert await status(mkdir(pg, path)) == 400, path
        assert await status(pg.get(path)) == 400, path
        assert await status(pg.rename("d/ok.txt", path)) == 400, path
        assert await status(pg.delete(path)) == 400, path
        assert await status(pg.is_hidden(path)) == 400, path
    assert await names(pg) == {"d"}
    assert await names(pg, "d") == {"ok.txt"}
    assert count_rows(database_url, "workspace_items") == 2
    # The limits themselves are fine; leading and trailing slashes are dropped as Jupyter does.
    assert (await save_text(pg, "/" + "n" * 255 + "/", "x"))["path"] == "n" * 255
    assert (await mkdir(pg, "d/" + "é" * 127))["name"] == "é" * 127


async def test_postgres_only_names_are_nfc(pg: PostgresContentsManager) -> None:
    decomposed = unicodedata.normalize("NFD", "café.txt")
    composed = unicodedata.normalize("NFC", "café.txt")
    assert decomposed != composed
    saved = await save_text(pg, decomposed, "x")
    assert saved["path"] == composed
    assert (await pg.get(composed))["content"] == "x"
    assert (await pg.get(decomposed))["path"] == composed
    assert await names(pg) == {composed}


async def test_postgres_only_hidden_save_writes_nothing(
    make_pg: Callable[..., PostgresContentsManager],
) -> None:
    pg = make_pg()
    assert await status(save_text(pg, "d/.secret", "x")) == 400
    assert await status(upload(pg, ".big", b"x" * 10, chunk_size=4)) == 400
    assert not await make_pg(allow_hidden=True).exists(".big")


async def test_postgres_only_missing_parent_is_404(pg: PostgresContentsManager) -> None:
    assert await status(save_text(pg, "nope/a.txt", "x")) == 404
    assert await status(mkdir(pg, "nope/sub")) == 404
    await save_text(pg, "file.txt", "x")
    assert await status(save_text(pg, "file.txt/a.txt", "x")) == 404
    assert await status(pg.rename("file.txt", "nope/file.txt")) == 404
    assert await status(pg.save({"type": "file", "format": "text", "content": "x"}, "")) == 400


async def test_postgres_only_last_modified_grows_by_a_millisecond(
    pg: PostgresContentsManager,
) -> None:
    # Changed content, then the same content again (which is not rewritten, but dated anew).
    texts = [str(i) for i in range(20)] + ["same"] * 10
    stamps = [(await save_text(pg, "fast.txt", text))["last_modified"] for text in texts]
    for before, after in itertools.pairwise(stamps):
        assert after - before >= timedelta(milliseconds=1)
    # JupyterLab compares dates in whole milliseconds: each one is distinct at that precision.
    assert len({stamp.timestamp() * 1000 // 1 for stamp in stamps}) == len(stamps)


async def test_postgres_only_concurrent_saves_last_writer_wins(
    pg: PostgresContentsManager,
) -> None:
    # Not a contract test: Jupyter's manager tears here (it once left "888...89": one writer's
    # bytes over a longer one's), and answers each save with whatever is on disk by then.
    await save_text(pg, "race.txt", "start")
    contents = [str(i) * (100_000 + i) for i in range(10)]
    models = await asyncio.gather(*(save_text(pg, "race.txt", text) for text in contents))
    for model, text in zip(models, contents, strict=True):
        assert model["size"] == len(text)  # each answer describes its own write
    stamps = [model["last_modified"] for model in models]
    assert len(set(stamps)) == len(stamps)
    last = contents[stamps.index(max(stamps))]
    final = await pg.get("race.txt", require_hash=True)
    assert final["content"] == last
    assert final["last_modified"] == max(stamps)
    assert final["hash"] == hashlib.sha256(last.encode()).hexdigest()


async def test_postgres_only_upload_replaces_the_file_only_at_the_end(
    pg: PostgresContentsManager, database_url: str
) -> None:
    await save_text(pg, "doc.txt", "old")
    first = {"type": "file", "format": "text", "chunk": 1, "content": "new "}
    progress = await pg.save(first, "doc.txt")
    assert (progress["size"], progress["type"]) == (4, "file")
    assert (await pg.get("doc.txt"))["content"] == "old"
    await pg.save({**first, "chunk": 2, "content": "and "}, "doc.txt")
    await pg.save({**first, "chunk": 2, "content": "and "}, "doc.txt")  # a resent chunk
    done = await pg.save({**first, "chunk": -1, "content": "done"}, "doc.txt")
    assert done["size"] == len("new and done")
    assert (await pg.get("doc.txt"))["content"] == "new and done"
    assert count_rows(database_url, "uploads") == 0
    # A chunk other than 1 with no upload in progress, or a bad chunk number: 400.
    assert await status(pg.save({**first, "chunk": 3}, "other.txt")) == 400
    assert await status(pg.save({**first, "chunk": 0}, "other.txt")) == 400
    assert await status(pg.save({**first, "chunk": "1"}, "other.txt")) == 400
    assert await status(pg.save({**first, "type": "notebook"}, "other.txt")) == 400
    # A last chunk alone is a whole file.
    assert (await pg.save({**first, "chunk": -1, "content": "one"}, "one.txt"))["size"] == 3


async def test_postgres_only_checkpoints_newest_kept_and_deduplicated(
    pg: PostgresContentsManager,
) -> None:
    pg.checkpoints.max_checkpoints = 3
    made = []
    for version in range(5):
        await save_text(pg, "a.txt", f"v{version}")
        made.append(await pg.create_checkpoint("a.txt"))
    same = await pg.create_checkpoint("a.txt")  # identical to the newest: not a new one
    assert same == made[-1]
    listed = await pg.list_checkpoints("a.txt")
    assert [c["id"] for c in listed] == [c["id"] for c in made[-3:]]  # oldest first
    assert all(c["id"].isdigit() for c in listed)
    await pg.restore_checkpoint(made[2]["id"], "a.txt")
    assert (await pg.get("a.txt"))["content"] == "v2"
    assert await status(pg.restore_checkpoint(made[0]["id"], "a.txt")) == 404
    assert await status(pg.restore_checkpoint("not-a-number", "a.txt")) == 404
    assert await status(pg.restore_checkpoint(made[3]["id"], "b.txt")) == 404
    await mkdir(pg, "d")
    assert await status(pg.create_checkpoint("d")) == 400
    assert await status(pg.create_checkpoint("missing.txt")) == 404
    # A checkpoint is dated by the file version it saved.
    model = await pg.get("a.txt", content=False)
    assert (await pg.create_checkpoint("a.txt"))["last_modified"] == model["last_modified"]


async def test_postgres_only_checkpoints_move_and_go_with_directories(
    pg: PostgresContentsManager, database_url: str
) -> None:
    await mkdir(pg, "d")
    await mkdir(pg, "d2")
    await save_text(pg, "d/a.txt", "x")
    await save_text(pg, "d2/a.txt", "y")
    await pg.create_checkpoint("d/a.txt")
    await pg.create_checkpoint("d2/a.txt")
    await pg.rename("d", "e")
    assert len(await pg.list_checkpoints("e/a.txt")) == 1
    await pg.delete("e")
    assert await pg.list_checkpoints("e/a.txt") == []
    assert len(await pg.list_checkpoints("d2/a.txt")) == 1
    assert count_rows(database_url, "checkpoints") == 1


def put_handler(if_match: str | None) -> RequestHandler:
    """The handler of a PUT request (what CallContext gives a manager during a request)."""
    headers = HTTPHeaders({"Host": "localhost"})
    if if_match is not None:
        headers["If-Match"] = if_match
    request = HTTPServerRequest(
        start_line=RequestStartLine("PUT", "/api/contents/a.txt", "HTTP/1.1"),
        headers=headers,
        connection=mock.Mock(),
    )
    return RequestHandler(Application(), request)


async def test_postgres_only_if_match(pg: PostgresContentsManager) -> None:
    saved = await save_text(pg, "a.txt", "first")
    stored = (await pg.get("a.txt", content=False, require_hash=True))["hash"]

    CallContext.set(CallContext.JUPYTER_HANDLER, put_handler('"0000"'))
    with pytest.raises(HTTPError) as info:
        await save_text(pg, "a.txt", "second")
    assert info.value.status_code == 409
    assert "changed" in info.value.log_message
    model = await pg.get("a.txt", require_hash=True)
    assert (model["content"], model["hash"]) == ("first", stored)
    assert model["last_modified"] == saved["last_modified"]
    # The same stale tag on a new file: there is nothing it can match.
    assert await status(save_text(pg, "new.txt", "x")) == 409
    assert not await exists(pg, "new.txt")

    # The tag as is, quoted, weak, in a list, and "*" (any existing file) are all accepted.
    for number, form in enumerate(("{}", '"{}"', 'W/"{}"', '"other", "{}"', "*")):
        CallContext.set(CallContext.JUPYTER_HANDLER, put_handler(form.format(stored)))
        await save_text(pg, "a.txt", f"version {number}")
        stored = (await pg.get("a.txt", content=False, require_hash=True))["hash"]
        assert stored == hashlib.sha256(f"version {number}".encode()).hexdigest()

    CallContext.set(CallContext.JUPYTER_HANDLER, put_handler(None))
    await save_text(pg, "a.txt", "third")  # no If-Match: saved as Jupyter does
    CallContext.set(CallContext.JUPYTER_HANDLER, None)
    assert (await pg.get("a.txt"))["content"] == "third"


async def test_postgres_only_listing_of_10000_entries(
    pg: PostgresContentsManager, database_url: str
) -> None:
    await mkdir(pg, "many")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            """WITH files AS (
                   INSERT INTO workspace_items (workspace_id, path, parent, name, type,
                                                content_id, size, sha256, mimetype)
                   SELECT %(ws)s, 'many/f' || n || '.py', 'many', 'f' || n || '.py', 'file',
                          nextval('content_ids'), 1, sha256('\\x00'::bytea), 'text/x-python'
                   FROM generate_series(1, 10000) AS n
                   RETURNING content_id)
               INSERT INTO content_parts (content_id, seq, data, workspace_id)
               SELECT content_id, 1, '\\x00'::bytea, %(ws)s FROM files""",
            {"ws": pg.workspace_id},
        )
    model = await pg.get("many")
    assert len(model["content"]) == 10_000
    assert model["content"][0]["mimetype"] == "text/x-python"
    assert model["content"][0]["size"] == 1
    assert await read(pg, "many/f1.py") == b"\x00"


async def test_postgres_only_workspaces_are_isolated(
    make_pg: Callable[..., PostgresContentsManager], db: Database, database_url: str
) -> None:
    ours = make_pg()
    other = PostgresContentsManager(
        db=db, workspace_id=create_workspace(database_url, "other"), config=manager_config()
    )
    await save_text(ours, "a.txt", "ours")
    await save_text(other, "a.txt", "theirs")
    await other.delete("a.txt")
    assert (await ours.get("a.txt"))["content"] == "ours"
    assert await names(other) == set()


async def test_postgres_only_a_deleted_workspace_has_no_files(
    pg: PostgresContentsManager, database_url: str
) -> None:
    await save_text(pg, "a.txt", "x")
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM workspaces WHERE id = %s", [pg.workspace_id])
    assert await status(pg.get("")) == 404
    assert await status(pg.get("a.txt")) == 404
    assert await status(save_text(pg, "b.txt", "x")) == 404


async def test_postgres_only_unbound_manager_fails_clearly() -> None:
    pg = PostgresContentsManager(config=manager_config())
    assert await status(pg.get("")) == 500
