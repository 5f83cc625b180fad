"""Routes whose handlers module is imported by the first request to one of them.

A sandbox that only ever serves a terminal never loads the kernels' or the language servers'
code (docs/performance.md has what that saves). Tornado routes a request to a ``Router`` as it
would to a handler class, so ``LazyRoutes`` stands in the application's table for a path
pattern, imports the module at its first request, and from then on routes to the module's
``default_handlers`` as if they were in the table itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from tornado import httputil, web
from tornado.routing import PathMatches, Router, RuleRouter


class HandlerRules(RuleRouter):
    """``(pattern, handler class)`` rules served by ``application``, as its own table is."""

    def __init__(self, application: web.Application, rules: list[Any]) -> None:
        self.application = application
        super().__init__(rules)

    def get_target_delegate(
        self, target: Any, request: httputil.HTTPServerRequest, **target_params: Any
    ) -> httputil.HTTPMessageDelegate | None:
        return self.application.get_handler_delegate(request, target, **target_params)


class LazyRoutes(Router):
    """The ``default_handlers`` of ``module``, imported by the first request routed here."""

    def __init__(self, application: web.Application, module: str) -> None:
        self.application = application
        self.module = module
        self.rules: HandlerRules | None = None

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> httputil.HTTPMessageDelegate | None:
        if self.rules is None:
            handlers = importlib.import_module(self.module).default_handlers
            self.rules = HandlerRules(self.application, handlers)
        return self.rules.find_handler(request)


def add_lazy_routes(application: web.Application, routes: dict[str, str]) -> None:
    """Serve each path pattern of ``routes`` with the handlers of its module, imported when
    first needed. A path that matches a pattern but none of the module's routes goes on to
    the application's default handler."""
    application.wildcard_router.add_rules(
        [
            (PathMatches(pattern), LazyRoutes(application, module))
            for pattern, module in routes.items()
        ]
    )
