"""Search in files and quick open (``/w/<uuid>/api/search``): matches, options, globs, regular
expressions, limits, binary and large files, ownership, and a 10,000-file workspace."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest

from extensions.workspaces.search import WorkspaceSearch
from extensions.workspaces.search_options import SearchOptions, glob_pattern
from extensions.workspaces.search_store import Scope, candidates_query
from platform_server.app import PlatformApp
from platform_server.db.migrate import apply_migrations
from tests import postgres
from tests.client import Client, Response

TokenClientFactory = Callable[..., Awaitable[Client]]
MANY_FILES = 10_000


async def new_workspace(api: Client, files: dict[str, str | bytes]) -> str:
    """A workspace holding ``files`` (text, or bytes sent as base64) besides main.py."""
    response = await api.post("/api/workspaces", {"name": "search"})
    assert response.status == 201, response.body
    workspace = str(response.json["uuid"])
    folders = sorted({path.rsplit("/", 1)[0] for path in files if "/" in path})
    for folder in folders:
        response = await api.request(
            "PUT", f"/w/{workspace}/api/contents/{folder}", {"type": "directory"}
        )
        assert response.status in (200, 201), response.body
    for path, content in files.items():
        await put(api, workspace, path, content)
    return workspace


async def put(api: Client, workspace: str, path: str, content: str | bytes) -> None:
    if isinstance(content, bytes):
        model = {"type": "file", "format": "base64", "content": base64.b64encode(content).decode()}
    else:
        model = {"type": "file", "format": "text", "content": content}
    response = await api.request("PUT", f"/w/{workspace}/api/contents/{path}", model)
    assert response.status in (200, 201), response.body


async def search(api: Client, workspace: str, **options: Any) -> Response:
    return await api.get(f"/w/{workspace}/api/search?{urlencode(options)}")


async def found(api: Client, workspace: str, **options: Any) -> dict[str, list[tuple[int, int]]]:
    """Each file's matches as (line, column), for a search that must succeed."""
    response = await search(api, workspace, **options)
    assert response.status == 200, response.body
    return {
        f["path"]: [(m["line"], m["column"]) for m in f["matches"]] for f in response.json["files"]
    }


async def test_matches_have_lines_columns_and_previews(
    make_token_client: TokenClientFactory,
) -> None:
    api = await make_token_client()
    ws = await new_workspace(
        api, {"a.py": "x = 1\n    foo bar Foo\n", "b.txt": "nothing\r\nFOO here\r\n", "c.md": "no"}
    )
    response = await search(api, ws, q="foo")
    assert response.status == 200, response.body
    body = response.json
    assert body["truncated"] is False
    assert body["searched_files"] == 4  # main.py, a.py, b.txt, c.md
    assert [f["path"] for f in body["files"]] == ["a.py", "b.txt"]
    first, second = body["files"][0]["matches"]
    assert first == {
        "line": 2,
        "column": 5,
        "length": 3,
        "preview": {"before": "", "match": "foo", "after": " bar Foo"},
    }
    assert (second["line"], second["column"], second["preview"]["match"]) == (2, 13, "Foo")
    # Windows line ends are not part of the line.
    assert body["files"][1]["matches"][0]["preview"] == {
        "before": "",
        "match": "FOO",
        "after": " here",
    }
    assert await found(api, ws, q="foo", case="true") == {"a.py": [(2, 5)]}


async def test_columns_count_utf16_code_units(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {"u.txt": "é😀 target\n"})
    response = await search(api, ws, q="target")
    match = response.json["files"][0]["matches"][0]
    # é is one code unit, 😀 two, then a space: "target" starts at column 5.
    assert (match["column"], match["length"]) == (5, 6)
    assert match["preview"] == {"before": "é😀 ", "match": "target", "after": ""}


async def test_whole_word_and_regular_expressions(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {"w.txt": "foobar foo food\nx.y xzy\n"})
    assert await found(api, ws, q="foo", word="true") == {"w.txt": [(1, 8)]}
    assert await found(api, ws, q="fo+d", regex="true") == {"w.txt": [(1, 12)]}
    # Literal text is literal: "." is a dot, not any character.
    assert await found(api, ws, q="x.y") == {"w.txt": [(2, 1)]}
    assert await found(api, ws, q="x.y", regex="true") == {"w.txt": [(2, 1), (2, 5)]}
    # Anchors are per line; empty matches are not results.
    assert await found(api, ws, q="^x", regex="true") == {"w.txt": [(2, 1)]}
    assert await found(api, ws, q="z*", regex="true") == {"w.txt": [(2, 6)]}
    assert await found(api, ws, q=r"\mfoo\w*", regex="true", word="true") == {
        "w.txt": [(1, 1), (1, 8), (1, 12)]
    }


async def test_replacement_preview(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {"r.txt": "ann@old bob@old\n"})
    response = await search(api, ws, q=r"(\w+)@old", regex="true", replace=r"\1@new")
    matches = response.json["files"][0]["matches"]
    assert [m["replacement"] for m in matches] == ["ann@new", "bob@new"]
    response = await search(api, ws, q="@old", replace=r"\1&")
    assert [m["replacement"] for m in response.json["files"][0]["matches"]] == [r"\1&"] * 2


async def test_include_and_exclude_globs(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    files = {"src/a.py": "token", "src/b.txt": "token", "tests/c.py": "token", "d.py": "token"}
    ws = await new_workspace(api, files)
    every = {"d.py": [(1, 1)], "src/a.py": [(1, 1)], "src/b.txt": [(1, 1)], "tests/c.py": [(1, 1)]}
    assert await found(api, ws, q="token") == every

    async def paths(**options: str) -> list[str]:
        return sorted(await found(api, ws, q="token", **options))

    assert await paths(include="*.py") == ["d.py", "src/a.py", "tests/c.py"]
    assert await paths(include="src") == ["src/a.py", "src/b.txt"]
    assert await paths(include="src/*.py, tests") == ["src/a.py", "tests/c.py"]
    assert await paths(include="**/*.{py,txt}", exclude="tests/**") == [
        "d.py",
        "src/a.py",
        "src/b.txt",
    ]
    assert await paths(exclude="*.py") == ["src/b.txt"]
    assert await paths(include="s?c/a.*") == ["src/a.py"]


def test_glob_patterns() -> None:
    assert glob_pattern([]) is None
    assert glob_pattern(["*.py"]) == r"((^|/)[^/]*\.py(/|$))"
    assert glob_pattern(["src/**/x"]) == r"(^src\/(.*/)?x(/|$))"


@pytest.mark.parametrize(
    ("options", "reason", "message"),
    [
        ({"q": "(", "regex": "true"}, "invalid_regex", "The regular expression is not valid: "),
        ({"q": "a{2,1}", "regex": "true"}, "invalid_regex", "The regular expression is not"),
        ({"q": "(?i)a", "regex": "true"}, "invalid_input", "Embedded options"),
        ({"q": ""}, "invalid_input", "Give the text to search for as 'q'."),
        ({}, "invalid_input", "Give the text to search for as 'q'."),
        ({"q": "a", "regex": "maybe"}, "invalid_input", "'regex' must be true or false"),
        ({"q": "a", "max_results": "0"}, "invalid_input", "'max_results' must be a whole number"),
        ({"q": "a", "max_results": "x"}, "invalid_input", "'max_results' must be a whole number"),
        ({"q": "a", "max_results": "2001"}, "invalid_input", "from 1 to 2000"),
        ({"q": "a", "colour": "red"}, "invalid_input", "Unknown option(s): colour."),
        ({"q": "a", "include": "{src"}, "invalid_input", "Unclosed '{'"),
        ({"q": "a" * 1001}, "invalid_input", "'q' is longer than 1000 characters."),
        ({"q": "a\x00"}, "invalid_input", "'q' cannot contain a NUL character."),
    ],
)
async def test_bad_options_are_400(
    make_token_client: TokenClientFactory, options: dict[str, str], reason: str, message: str
) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {})
    response = await search(api, ws, **options)
    assert response.status == 400, response.body
    assert response.json["reason"] == reason
    assert response.json["message"].startswith(message) or message in response.json["message"]


async def test_repeated_and_undecodable_arguments_are_400(
    make_token_client: TokenClientFactory,
) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {})
    response = await api.get(f"/w/{ws}/api/search?q=a&q=b")
    assert (response.status, response.json["message"]) == (400, "'q' is given more than once.")
    # JupyterLab's ServerConnection adds a bare number against caches: it is no option.
    assert (await api.get(f"/w/{ws}/api/search?q=a&1712345678")).status == 200
    response = await api.get(f"/w/{ws}/api/search?q=%ff")
    assert (response.status, response.json["message"]) == (
        400,
        "The query arguments are not UTF-8 text.",
    )


async def test_results_are_bounded(
    make_token_client: TokenClientFactory, jp_serverapp: PlatformApp
) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {"a.txt": "hit hit\nhit\n", "b.txt": "hit\nhit\n"})
    response = await search(api, ws, q="hit", max_results="4")
    assert response.json["truncated"] is True
    assert [(f["path"], len(f["matches"])) for f in response.json["files"]] == [
        ("a.txt", 3),
        ("b.txt", 1),
    ]
    response = await search(api, ws, q="hit", max_results="5")
    assert response.json["truncated"] is False
    service: WorkspaceSearch = jp_serverapp.web_app.settings["workspace_search"]
    service.max_results = 2
    response = await search(api, ws, q="hit")
    assert response.json["truncated"] is True
    assert sum(len(f["matches"]) for f in response.json["files"]) == 2


async def test_a_search_past_its_time_limit_is_422(
    make_token_client: TokenClientFactory, jp_serverapp: PlatformApp
) -> None:
    api = await make_token_client()
    line = "abcdefghij" * 50 + "\n"
    ws = await new_workspace(api, {"big.txt": line * 1500})
    service: WorkspaceSearch = jp_serverapp.web_app.settings["workspace_search"]
    service.timeout = 0.001
    response = await search(api, ws, q="[a-j]+j", regex="true")
    assert response.status == 422, response.body
    assert response.json["reason"] == "search_timeout"
    assert "longer than 0.001 seconds" in response.json["message"]
    service.timeout = 10
    assert (await search(api, ws, q="j\\n", regex="true")).status == 200


async def test_binary_and_large_files_are_skipped(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    ws = await new_workspace(
        api,
        {
            "nul.bin": b"needle\x00\x01",
            "latin1.txt": b"needle caf\xe9",
            "ok.txt": "needle",
            "large.txt": "needle\n" + "x" * (1024 * 1024),
        },
    )
    response = await search(api, ws, q="needle")
    assert [f["path"] for f in response.json["files"]] == ["ok.txt"]
    assert response.json["searched_files"] == 2  # main.py and ok.txt


async def test_the_index_follows_saves_copies_moves_and_deletes(
    make_token_client: TokenClientFactory,
) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {"a.txt": "zebra words"})
    await put(api, ws, "a.txt", "quokka words")
    assert await found(api, ws, q="zebra") == {}
    assert await found(api, ws, q="quokka") == {"a.txt": [(1, 1)]}
    response = await api.post(f"/w/{ws}/api/contents", {"copy_from": "a.txt"})
    assert response.status == 201, response.body
    copy = response.json["path"]
    assert sorted(await found(api, ws, q="quokka")) == sorted(["a.txt", copy])
    response = await api.patch(f"/w/{ws}/api/contents/a.txt", {"path": "b.txt"})
    assert response.status == 200, response.body
    assert sorted(await found(api, ws, q="quokka")) == sorted(["b.txt", copy])
    assert (await api.delete(f"/w/{ws}/api/contents/b.txt")).status == 204
    assert (await api.delete(f"/w/{ws}/api/contents/{copy}")).status == 204
    assert await found(api, ws, q="quokka") == {}


async def test_owner_only(make_token_client: TokenClientFactory, base_url: str) -> None:
    alice = await make_token_client("alice")
    bob = await make_token_client("bob")
    ws = await new_workspace(alice, {"a.txt": "secret"})
    for path in (f"/w/{ws}/api/search?q=secret", f"/w/{ws}/api/search/files?q=a"):
        response = await bob.get(path)
        assert response.status == 404, response.body
        assert response.json["reason"] == "not_found"
        anonymous = await Client(base_url).get(path)
        assert anonymous.status == 401, anonymous.body
        assert anonymous.json["reason"] == "unauthenticated"
    # Bad options of another user's workspace say nothing but 404.
    assert (await bob.get(f"/w/{ws}/api/search?q=(&regex=true")).status == 404


async def test_file_names_fuzzy(make_token_client: TokenClientFactory) -> None:
    api = await make_token_client()
    files = {
        "src/search_handlers.py": "",
        "docs/search.md": "",
        "src/handlers.py": "",
        "notes_100%.txt": "",
    }
    ws = await new_workspace(api, files)
    response = await api.get(f"/w/{ws}/api/search/files?q=srchhand")
    assert response.status == 200, response.body
    hits = response.json["files"]
    assert [h["path"] for h in hits] == ["src/search_handlers.py"]
    assert [hits[0]["path"][i] for i in hits[0]["positions"]] == list("srchhand")
    # The file name counts first: "handlers" in a name beats it spread over a path.
    response = await api.get(f"/w/{ws}/api/search/files?q=handlers")
    assert [h["path"] for h in response.json["files"]] == [
        "src/handlers.py",
        "src/search_handlers.py",
    ]
    response = await api.get(f"/w/{ws}/api/search/files?q=100%25")
    assert [h["path"] for h in response.json["files"]] == ["notes_100%.txt"]
    response = await api.get(f"/w/{ws}/api/search/files")
    assert [h["path"] for h in response.json["files"]] == [
        "docs/search.md",
        "main.py",
        "notes_100%.txt",
        "src/handlers.py",
        "src/search_handlers.py",
    ]
    response = await api.get(f"/w/{ws}/api/search/files?x=1")
    assert response.status == 400


def store_many_files(database_url: str, workspace: str) -> None:
    """``MANY_FILES`` small Python files, written straight into PostgreSQL (as saves write
    them: content parts, then items), one holding a rare word."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute(
            """CREATE TEMP TABLE many ON COMMIT DROP AS
               SELECT g, nextval('content_ids') AS content_id,
                      convert_to(format(E'def f%%s():\\n    return %%s\\n', g,
                          CASE WHEN g = 7777 THEN '"rare_needle"' ELSE g::text END), 'UTF8')
                          AS data
               FROM generate_series(1, %s) g""",
            [MANY_FILES],
        )
        conn.execute(
            """INSERT INTO content_parts (content_id, seq, data, workspace_id)
               SELECT content_id, 1, data, %s FROM many""",
            [workspace],
        )
        conn.execute(
            """INSERT INTO workspace_items
                   (workspace_id, path, parent, name, type, content_id, size, sha256, mimetype)
               SELECT %s, format('m%%s.py', g), '', format('m%%s.py', g), 'file', content_id,
                      octet_length(data), sha256(data), 'text/x-python'
               FROM many""",
            [workspace],
        )
        conn.execute("ANALYZE workspace_items")
        conn.execute("ANALYZE search_texts")


async def test_a_10000_file_workspace(
    make_token_client: TokenClientFactory, database_url: str
) -> None:
    api = await make_token_client()
    ws = await new_workspace(api, {})
    store_many_files(database_url, ws)
    body = (await search(api, ws, q="rare_needle")).json
    assert body["searched_files"] == MANY_FILES + 1
    assert body["files"] == [
        {
            "path": "m7777.py",
            "matches": [
                {
                    "line": 2,
                    "column": 13,
                    "length": 11,
                    "preview": {"before": 'return "', "match": "rare_needle", "after": '"'},
                }
            ],
        }
    ]
    body = (await search(api, ws, q="return", max_results="10")).json
    assert body["truncated"] is True
    first_ten = sorted(f"m{i}.py" for i in range(1, MANY_FILES + 1))[:10]
    assert [f["path"] for f in body["files"]] == first_ten
    names = (await api.get(f"/w/{ws}/api/search/files?q=m7777")).json
    assert names["files"][0]["path"] == "m7777.py"


@pytest.fixture
def trigram_database_url(database_url: str) -> Iterator[str]:
    """A migrated database on a server with pg_trgm: the run's own when it has it, else a
    throwaway cluster of Debian's PostgreSQL (the embedded server has no pg_trgm)."""
    with psycopg.connect(database_url) as conn:
        if (
            conn.execute("SELECT FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
            is not None
        ):
            yield database_url
            return
    with postgres.debian_postgres() as admin_url:
        url = postgres.create_database(admin_url)
        apply_migrations(url, logging.getLogger("tests"))
        yield url


def test_the_trigram_index_serves_searches(trigram_database_url: str) -> None:
    database_url = trigram_database_url
    with psycopg.connect(database_url) as conn:
        assert (
            conn.execute("SELECT FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
            is not None
        )
        owner = conn.execute(
            "INSERT INTO users (username, password_hash) VALUES ('searcher', 'x') RETURNING id"
        ).fetchone()
        assert owner is not None
        row = conn.execute(
            "INSERT INTO workspaces (owner_id, name) VALUES (%s, 'w') RETURNING id", [owner[0]]
        ).fetchone()
        assert row is not None
        conn.commit()
        store_many_files(database_url, str(row[0]))
        # As autovacuum would: rows still in the index's pending list make it look dear.
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) search_texts, workspace_items")
        options = SearchOptions(query="rare_needle")
        scope = Scope(row[0], options.pattern, case_sensitive=False, max_file_size=1 << 20)
        query = candidates_query(scope).as_string(conn)
        plan = conn.execute(
            "EXPLAIN " + query,
            scope.params(max_files=10),
        ).fetchall()
    text = "\n".join(line[0] for line in plan)
    assert "search_texts_body_trgm_idx" in text, text
