"""The OpenAPI document of the platform's own API: valid OpenAPI 3.1, served, and in step with
the server's URL table (every route outside a workspace's Jupyter services, and no other)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from openapi_spec_validator import validate
from tornado.routing import PathMatches, Rule
from tornado.web import RequestHandler

from platform_server.app import PlatformApp
from platform_server.handlers import OPENAPI_PATH
from tests.client import Client

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# The Jupyter services of a workspace: jupyter_server's own APIs (its api.yaml describes them).
JUPYTER_SERVICES = re.compile(
    r"^/w/\(\?P<workspace(?:_id)?>\[\^/\]\+\)/"
    r"(?:api/(?:contents|kernelspecs|kernels|sessions|terminals)|files/|kernelspecs/|terminals/)"
)
# Patterns that are no routes of their own: jupyter_server's redirect of any path ending in "/",
# the JSON 404 of every other URL, and a second robots.txt/favicon.ico rule that the first
# ones shadow.
NOT_ROUTES = {r"/.*/$", r"(.*)$", r"/(robots\.txt|favicon\.ico)$"}


def document() -> dict[str, Any]:
    return json.loads(OPENAPI_PATH.read_text())  # type: ignore[no-any-return]


def rules(app: PlatformApp) -> Iterator[Rule]:
    """Every rule of the server's URL table, in the order tornado tries them."""

    def walk(found: list[Rule]) -> Iterator[Rule]:
        for rule in found:
            nested = getattr(rule.target, "rules", None)
            if nested is not None:
                yield from walk(nested)
            else:
                yield rule

    yield from walk(app.web_app.default_router.rules)


def pattern(rule: Rule) -> str:
    assert isinstance(rule.matcher, PathMatches)
    return rule.matcher.regex.pattern


def route_of(app: PlatformApp, path: str) -> Rule:
    """The rule that serves ``path`` (the first that matches, as tornado picks it)."""
    for rule in rules(app):
        if isinstance(rule.matcher, PathMatches) and rule.matcher.regex.match(path):
            return rule
    raise AssertionError(path)


def sample_path(template: str, parameters: list[dict[str, Any]]) -> str:
    """A concrete URL of a document path: each parameter replaced by a value of its type."""
    for parameter in parameters:
        if parameter["in"] != "path":
            continue
        schema = parameter["schema"]
        value = {"integer": "12"}.get(schema.get("type"), "sample")
        if schema.get("format") == "uuid":
            value = str(uuid.uuid4())
        template = template.replace("{" + parameter["name"] + "}", value)
    assert "{" not in template, template
    return template


def resolve(doc: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in item:
        found: Any = doc
        for key in item["$ref"].removeprefix("#/").split("/"):
            found = found[key]
        return found  # type: ignore[no-any-return]
    return item


def served_methods(handler: type[RequestHandler]) -> set[str]:
    """The HTTP methods a handler class implements (HEAD and OPTIONS left out)."""
    return {
        method
        for method in ("get", "put", "post", "delete", "patch")
        if getattr(handler, method) is not getattr(RequestHandler, method)
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)
    ids = [
        operation["operationId"]
        for item in doc["paths"].values()
        for method, operation in item.items()
        if method in METHODS
    ]
    assert len(ids) == len(set(ids))


def test_the_document_matches_the_url_table(jp_serverapp: PlatformApp) -> None:
    doc = document()
    reached: dict[str, set[str]] = {}
    for template, item in doc["paths"].items():
        parameters = [resolve(doc, p) for p in item.get("parameters", [])]
        methods = {method for method in item if method in METHODS}
        for method in methods:
            parameters += [resolve(doc, p) for p in item[method].get("parameters", [])]
        rule = route_of(jp_serverapp, sample_path(template, parameters))
        assert pattern(rule) not in NOT_ROUTES, f"{template} is served by no route"
        assert not JUPYTER_SERVICES.match(pattern(rule)), f"{template} is a Jupyter service"
        assert isinstance(rule.target, type)
        served = served_methods(rule.target)
        assert methods <= served, f"{template}: {sorted(methods - served)} not served"
        reached.setdefault(pattern(rule), set()).update(methods)

    for rule in rules(jp_serverapp):
        if not isinstance(rule.matcher, PathMatches):
            continue
        regex = pattern(rule)
        if regex in NOT_ROUTES or JUPYTER_SERVICES.match(regex):
            continue
        assert regex in reached, f"{regex} ({rule.target}) is missing from the document"
        assert isinstance(rule.target, type)
        missing = served_methods(rule.target) - reached[regex]
        assert not missing, f"{regex}: {sorted(missing)} missing from the document"


async def test_the_document_is_served_without_authentication(client: Client) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json == document()
    assert "/api/openapi.json" in response.json["paths"]
