"""SQL of search in files and of file names (``search_texts``, migration 0011). No
transactions of its own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from psycopg import sql

from platform_server.db import Connection


class MatchRow(TypedDict):
    """One match: its file, line (1-based), the line's text, and the match's place in it
    (1-based character positions, ``stop`` just past its end)."""

    path: str
    line: int
    text: str
    start: int
    stop: int
    replaced: str | None


@dataclass(frozen=True)
class Scope:
    """Which files a search reads, and with which pattern."""

    workspace_id: uuid.UUID
    pattern: str
    case_sensitive: bool
    max_file_size: int
    include: str | None = None
    exclude: str | None = None

    def where(self) -> sql.Composed:
        """The conditions on ``i`` (workspace_items) and ``t`` (search_texts)."""
        conditions = [
            sql.SQL("i.workspace_id = %(workspace)s AND i.type = 'file' AND i.size <= %(max_size)s")
        ]
        if self.include is not None:
            conditions.append(sql.SQL("i.path ~ %(include)s"))
        if self.exclude is not None:
            conditions.append(sql.SQL("i.path !~ %(exclude)s"))
        return sql.SQL(" AND ").join(conditions)

    @property
    def operator(self) -> sql.SQL:
        """``~`` or its case-insensitive twin ``~*``."""
        return sql.SQL("~" if self.case_sensitive else "~*")

    def params(self, **more: Any) -> dict[str, Any]:
        """The statement's parameters."""
        return {
            "workspace": self.workspace_id,
            "max_size": self.max_file_size,
            "include": self.include,
            "exclude": self.exclude,
            "pattern": self.pattern,
            "flags": "" if self.case_sensitive else "i",
            **more,
        }


async def set_timeout(conn: Connection, seconds: float) -> None:
    """Bound each following statement of the transaction to ``seconds`` (0: no bound)."""
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, true)", [f"{int(seconds * 1000)}ms"]
    )


async def check_pattern(conn: Connection, pattern: str) -> None:
    """Compile ``pattern`` without searching anything (PostgreSQL raises
    ``InvalidRegularExpression`` for a bad one)."""
    await conn.execute("SELECT '' ~ %s", [pattern])


def candidates_query(scope: Scope) -> sql.Composed:
    """The files of ``scope`` whose text matches, in path order (the statement a trigram
    index serves, where there is one)."""
    return sql.SQL(
        """SELECT i.path, t.body
           FROM workspace_items i JOIN search_texts t ON t.content_id = i.content_id
           WHERE {where} AND t.body {op} %(pattern)s
           ORDER BY i.path LIMIT %(max_files)s"""
    ).format(where=scope.where(), op=scope.operator)


async def find_matches(
    conn: Connection, scope: Scope, max_lines: int, replacement: str | None
) -> list[MatchRow]:
    """The matches in the first ``max_lines`` matching lines, in path and line order (empty
    matches, such as ``^`` finds, left out). With ``replacement``, each match's line as it
    reads once that match alone is replaced (``regexp_replace``'s syntax)."""
    replaced = (
        sql.SQL("regexp_replace(l.text, %(pattern)s, %(replacement)s, 1, m.k, %(flags)s)")
        if replacement is not None
        else sql.SQL("NULL::text")
    )
    query = sql.SQL(
        """WITH files AS MATERIALIZED ({candidates}),
           lines AS MATERIALIZED (
               SELECT f.path, l.n AS line, l.text
               FROM files f,
                    LATERAL regexp_split_to_table(f.body, E'\\r?\\n') WITH ORDINALITY l(text, n)
               WHERE l.text {op} %(pattern)s
               ORDER BY f.path, l.n LIMIT %(max_lines)s)
           SELECT l.path, l.line::int AS line, l.text, m.start, m.stop, {replaced} AS replaced
           FROM lines l,
                LATERAL generate_series(1, regexp_count(l.text, %(pattern)s, 1, %(flags)s)) m0(k),
                LATERAL (SELECT m0.k AS k,
                                regexp_instr(l.text, %(pattern)s, 1, m0.k, 0, %(flags)s) AS start,
                                regexp_instr(l.text, %(pattern)s, 1, m0.k, 1, %(flags)s) AS stop
                        ) m
           WHERE m.stop > m.start
           ORDER BY l.path, l.line, m.k"""
    ).format(candidates=candidates_query(scope), op=scope.operator, replaced=replaced)
    params = scope.params(max_files=max_lines, max_lines=max_lines, replacement=replacement)
    cur = await conn.execute(query, params)
    return cast(list[MatchRow], await cur.fetchall())


async def count_searched(conn: Connection, scope: Scope) -> int:
    """How many text files ``scope`` covers (binary files have no text)."""
    cur = await conn.execute(
        sql.SQL(
            """SELECT count(*) AS n
               FROM workspace_items i JOIN search_texts t ON t.content_id = i.content_id
               WHERE {where}"""
        ).format(where=scope.where()),
        scope.params(),
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row["n"])


async def file_paths(
    conn: Connection, workspace_id: uuid.UUID, like: str, limit: int | None
) -> list[str]:
    """Paths of the workspace's files and notebooks matching the ``ILIKE`` pattern ``like``,
    at most ``limit`` (None: all), in path order."""
    cur = await conn.execute(
        """SELECT path FROM workspace_items
           WHERE workspace_id = %s AND type <> 'directory' AND path ILIKE %s
           ORDER BY path LIMIT %s""",
        [workspace_id, like, limit],
    )
    return [row["path"] for row in await cur.fetchall()]
