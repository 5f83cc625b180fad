"""``WorkspaceSearch``: find text in a workspace's files, and its files by fuzzy name, in
PostgreSQL (no sandbox needed), bounded in time and in results."""

from __future__ import annotations

import uuid
from typing import TypedDict

import psycopg
from traitlets import Float, Instance, Integer
from traitlets.config import LoggingConfigurable

from extensions.workspaces import fuzzy, search_store
from extensions.workspaces.search_options import SearchOptions, glob_pattern
from extensions.workspaces.search_store import MatchRow, Scope
from platform_server.db import Database
from platform_server.errors import DomainError, InvalidInput

# Characters of a line shown before a match in its preview, and after it.
PREVIEW_BEFORE = 60
PREVIEW_AFTER = 200
ELLIPSIS = "…"


class InvalidPattern(InvalidInput):
    """The regular expression does not compile; nothing was searched."""

    reason = "invalid_regex"


class SearchTimedOut(DomainError):
    """The search ran past its time limit; nothing is answered."""

    status_code = 422
    reason = "search_timeout"


class SearchUnsupported(DomainError):
    """The server's PostgreSQL is older than 15, which added ``regexp_count`` and
    ``regexp_instr``; nothing was searched."""

    status_code = 501
    reason = "unsupported"


class Preview(TypedDict):
    """A match's line cut around it: ``before + match + after``."""

    before: str
    match: str
    after: str


class MatchModel(TypedDict, total=False):
    """One match as the API shows it; columns and lengths in UTF-16 code units, as editors
    (Monaco, VS Code, LSP) count them."""

    line: int
    column: int
    length: int
    preview: Preview
    replacement: str


class FileMatches(TypedDict):
    """A file's matches, in line order."""

    path: str
    matches: list[MatchModel]


class SearchResult(TypedDict):
    """The answer of a search."""

    files: list[FileMatches]
    truncated: bool
    searched_files: int


class FileHit(TypedDict):
    """A quick-open candidate: its path and the indices of the characters that matched."""

    path: str
    positions: list[int]


class FileNameResult(TypedDict):
    """The answer of a file-name search."""

    files: list[FileHit]
    truncated: bool


def utf16_length(text: str) -> int:
    """Length of ``text`` in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def preview(text: str, start: int, stop: int) -> Preview:
    """The line ``text`` cut around the match ``text[start:stop]``."""
    before = text[:start]
    if len(before) > PREVIEW_BEFORE:
        before = ELLIPSIS + before[-PREVIEW_BEFORE:].lstrip()
    else:
        before = before.lstrip()
    after = text[stop:]
    if len(after) > PREVIEW_AFTER:
        after = after[:PREVIEW_AFTER] + ELLIPSIS
    return {"before": before, "match": text[start:stop], "after": after}


def match_model(row: MatchRow) -> MatchModel:
    """A match row as the API shows it."""
    text = row["text"]
    start, stop = row["start"] - 1, row["stop"] - 1
    model: MatchModel = {
        "line": row["line"],
        "column": utf16_length(text[:start]) + 1,
        "length": utf16_length(text[start:stop]),
        "preview": preview(text, start, stop),
    }
    replaced = row["replaced"]
    if replaced is not None:
        # Only that match was replaced: what precedes and follows it is unchanged.
        suffix = len(text) - stop
        model["replacement"] = replaced[start : len(replaced) - suffix]
    return model


def group(rows: list[MatchRow], limit: int) -> list[FileMatches]:
    """The first ``limit`` matches, grouped by file."""
    files: list[FileMatches] = []
    for row in rows[:limit]:
        if not files or files[-1]["path"] != row["path"]:
            files.append({"path": row["path"], "matches": []})
        files[-1]["matches"].append(match_model(row))
    return files


class WorkspaceSearch(LoggingConfigurable):
    """Search in files and quick open; handlers call into this."""

    max_results = Integer(
        2000,
        help="Most matches one search answers (a request's max_results may ask fewer); past "
        "it the answer says truncated.",
    ).tag(config=True)

    max_file_size = Integer(
        1024 * 1024,
        help="Largest file searched, in bytes. Files over 1 MiB (1048576 bytes) are never "
        "searched: the search keeps the text of files up to that size only.",
    ).tag(config=True)

    timeout = Float(
        10.0,
        help="Seconds a search may run in PostgreSQL (statement_timeout) before it is "
        "stopped and answered 422. 0 disables.",
    ).tag(config=True)

    max_file_names = Integer(
        50, help="Most file names a quick-open search answers, best first."
    ).tag(config=True)

    db = Instance(Database)

    async def search(self, workspace_id: uuid.UUID, options: SearchOptions) -> SearchResult:
        """Find ``options.query`` in the workspace's text files."""
        limit = min(options.max_results or self.max_results, self.max_results)
        scope = Scope(
            workspace_id=workspace_id,
            pattern=options.pattern,
            case_sensitive=options.case_sensitive,
            max_file_size=self.max_file_size,
            include=glob_pattern(options.include),
            exclude=glob_pattern(options.exclude),
        )
        # Inside the block: the pool takes other errors of PostgreSQL for an outage.
        async with self.db.transaction() as conn:
            try:
                await search_store.set_timeout(conn, self.timeout)
                await search_store.check_pattern(conn, scope.pattern)
                rows = await search_store.find_matches(conn, scope, limit + 1, options.replacement)
                searched = await search_store.count_searched(conn, scope)
            except psycopg.errors.InvalidRegularExpression as e:
                detail = e.diag.message_primary or "invalid regular expression"
                msg = f"The regular expression is not valid: {detail}."
                raise InvalidPattern(msg) from e
            except psycopg.errors.UndefinedFunction as e:
                msg = "Search in files needs PostgreSQL 15 or newer."
                raise SearchUnsupported(msg) from e
            except psycopg.errors.QueryCanceled as e:
                msg = (
                    f"The search took longer than {self.timeout:g} seconds and was stopped: "
                    "search for longer text, or narrow the files to include."
                )
                raise SearchTimedOut(msg) from e
        return {
            "files": group(rows, limit),
            "truncated": len(rows) > limit,
            "searched_files": searched,
        }

    async def file_names(self, workspace_id: uuid.UUID, query: str) -> FileNameResult:
        """The workspace's files whose path matches ``query`` fuzzily, best first; the first
        files in path order for an empty query."""
        limit = self.max_file_names
        listing = not query.strip()
        async with self.db.transaction() as conn:
            await search_store.set_timeout(conn, self.timeout)
            paths = await search_store.file_paths(
                conn, workspace_id, fuzzy.like_pattern(query), limit + 1 if listing else None
            )
        if listing:
            hits: list[FileHit] = [{"path": p, "positions": []} for p in paths[:limit]]
            return {"files": hits, "truncated": len(paths) > limit}
        ranked = fuzzy.rank(query, paths, limit)
        hits = [{"path": m.path, "positions": list(m.positions)} for m in ranked]
        return {"files": hits, "truncated": len(paths) > limit}
