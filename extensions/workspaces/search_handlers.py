"""``/w/<uuid>/api/search``: search in a workspace's files, and quick open by file name."""

from __future__ import annotations

from typing import cast

from tornado import web

from extensions.workspaces.handlers import WorkspacesAPIHandler
from extensions.workspaces.roles import Action
from extensions.workspaces.search import WorkspaceSearch
from extensions.workspaces.search_options import parse_file_query, parse_search
from platform_server.errors import InvalidInput
from platform_server.handlers import WORKSPACE_ROUTE


class SearchAPIHandler(WorkspacesAPIHandler):
    """Base: the search service."""

    @property
    def search(self) -> WorkspaceSearch:
        """The search service."""
        return cast(WorkspaceSearch, self.settings["workspace_search"])

    def arguments(self) -> dict[str, list[str]]:
        """The query arguments as text; 400 for bytes that are not UTF-8. A bare number
        (``&1712345678``, the cache buster JupyterLab's ``ServerConnection`` adds to every
        GET) is left out."""
        try:
            return {
                name: [value.decode("utf-8") for value in values]
                for name, values in self.request.query_arguments.items()
                if not (name.isdigit() and values == [b""])
            }
        except UnicodeDecodeError as e:
            msg = "The query arguments are not UTF-8 text."
            raise InvalidInput(msg) from e


class SearchHandler(SearchAPIHandler):
    """``GET /w/<uuid>/api/search?q=...``: matches in the workspace's text files."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """Search; options are checked (400) before anything runs."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        options = parse_search(self.arguments(), self.search.max_results)
        self.finish_json(await self.search.search(ws, options))


class FileNameSearchHandler(SearchAPIHandler):
    """``GET /w/<uuid>/api/search/files?q=...``: files by fuzzy name (quick open)."""

    @web.authenticated
    async def get(self, workspace_id: str) -> None:
        """The best matching file paths."""
        ws = await self.workspace_for(workspace_id, Action.READ)
        query = parse_file_query(self.arguments())
        self.finish_json(await self.search.file_names(ws, query))


default_handlers = [
    (rf"{WORKSPACE_ROUTE}/api/search", SearchHandler),
    (rf"{WORKSPACE_ROUTE}/api/search/files", FileNameSearchHandler),
]
