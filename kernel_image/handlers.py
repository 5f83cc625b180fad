"""REST: ``/api/token`` (the hand-over), ``/api/health`` and ``/api/terminals`` (shaped as
Jupyter's terminals API)."""

from __future__ import annotations

import re
import time
from typing import Any

from kernel_image import __version__, files
from kernel_image.auth import AgentHandler, ApiError
from kernel_image.terminals import (
    MaxTerminalsReached,
    TerminalExistsError,
    TerminalManager,
)
from kernel_image.timefmt import isoformat

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 1024
TOKEN_PATTERN = re.compile(r"[!-~]+")  # visible ASCII: it travels in a header
STARTED = time.time()


class TerminalsBase(AgentHandler):
    """A handler that uses the terminal manager."""

    @property
    def terminal_manager(self) -> TerminalManager:
        """The agent's terminals."""
        manager: TerminalManager = self.settings["terminal_manager"]
        return manager


class TokenHandler(AgentHandler):
    """``PUT /api/token`` ``{"token": "..."}``: the one request an agent without a token
    answers. The first sets the token (204); the same token again is 204 and changes nothing
    (a retry, another platform replica); any other token is 409 and changes nothing."""

    def prepare(self) -> None:
        """No token check: this request is how the token arrives."""

    def put(self) -> None:
        token = self.read_json_object().get("token")
        if (
            not isinstance(token, str)
            or not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH
            or not TOKEN_PATTERN.fullmatch(token)
        ):
            raise ApiError(
                400,
                f"token must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} visible ASCII characters",
            )
        if not self.token.claim(token):
            raise ApiError(409, "the agent has another token already")
        lifetime = self.settings.get("lifetime")
        if lifetime is not None:
            lifetime.heard(changes=False)
        self.set_status(204)
        self.finish()


class HealthHandler(TerminalsBase):
    """``GET /api/health``: liveness, and what the platform needs to judge idleness."""

    def get(self) -> None:
        last_input = self.terminal_manager.last_input
        kernels = self.settings.get("kernels")
        last_kernel = None if kernels is None else kernels.last_activity
        self.write_json(
            {
                "status": "ok",
                "version": __version__,
                "terminals": len(self.terminal_manager.terminals),
                "kernels": 0 if kernels is None else len(kernels.kernels),
                "last_input": None if last_input is None else isoformat(last_input),
                "last_kernel_activity": None if last_kernel is None else isoformat(last_kernel),
                "started": isoformat(self.settings.get("started", STARTED)),
            }
        )


class TerminalRootHandler(TerminalsBase):
    """``GET /api/terminals`` lists terminals; ``POST`` starts one."""

    def get(self) -> None:
        self.write_json([t.model() for t in self.terminal_manager.running()])

    def post(self) -> None:
        body = self.read_json_object()
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not NAME_PATTERN.fullmatch(name)):
            raise ApiError(400, "name must be 1 to 64 letters, digits, '.', '_' or '-'")
        cwd = self._cwd(body.get("cwd"))
        try:
            terminal = self.terminal_manager.create(name=name, cwd=cwd)
        except TerminalExistsError:
            raise ApiError(409, f"a terminal named {name!r} exists already") from None
        except MaxTerminalsReached as e:
            raise ApiError(409, f"at most {e.max_terminals} terminals may run at once") from None
        except OSError as e:
            raise ApiError(500, f"could not start a terminal: {e.strerror or e}") from None
        self.write_json(terminal.model())

    def _cwd(self, cwd: Any) -> str | None:
        if cwd is None or cwd == "":
            return None
        if not isinstance(cwd, str):
            raise ApiError(400, "cwd must be a path relative to the root")
        try:
            return files.existing_directory(self.config.root, cwd)
        except (files.PathError, OSError):
            raise ApiError(400, f"cwd {cwd!r} is not a folder inside the root") from None


class TerminalHandler(TerminalsBase):
    """``GET /api/terminals/<name>`` shows one terminal; ``DELETE`` ends it."""

    def get(self, name: str) -> None:
        terminal = self.terminal_manager.get(name)
        if terminal is None:
            raise ApiError(404, f"no terminal named {name!r}")
        self.write_json(terminal.model())

    async def delete(self, name: str) -> None:
        try:
            await self.terminal_manager.delete(name)
        except KeyError:
            raise ApiError(404, f"no terminal named {name!r}") from None
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/token", TokenHandler),
    (r"/api/health", HealthHandler),
    (r"/api/terminals", TerminalRootHandler),
    (r"/api/terminals/([^/]+)", TerminalHandler),
]
