"""``python -s -m kernel_image --fd N --root DIR``: a standard-library stand-in for the agent.

Serves, over the inherited listening Unix socket, ``GET /api/health`` and, for tests only,
``POST /api/exec`` (``{"argv": [...], "timeout": s}`` → ``{"returncode", "stdout", "stderr"}``),
both requiring ``Authorization: token <t>``, the token read from ``--token-fd`` (else
``$AGENT_TOKEN``). Like the agent, it is non-dumpable, and with ``--log-fd`` its stdin, stdout and
stderr become /dev/null (it logs nothing).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import socketserver
import subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

PR_SET_DUMPABLE = 4
ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
TOKEN = os.environ.pop("AGENT_TOKEN", "")
# What user processes get: no token, no agent on their path.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


class Handler(BaseHTTPRequestHandler):
    """Health and exec."""

    root = "/"

    def _authorized(self) -> bool:
        if TOKEN and self.headers.get("Authorization") == f"token {TOKEN}":
            return True
        self._reply(403, {"message": "bad token"})
        return False

    def _reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path == "/api/health":
            self._reply(200, {"status": "ok", "pid": os.getpid()})
        else:
            self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        if not self._authorized():
            return
        if self.path != "/api/exec":
            self._reply(404, {"message": "not found"})
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            result = subprocess.run(
                request["argv"],
                capture_output=True,
                text=True,
                timeout=request.get("timeout", 30),
                cwd=self.root,
                env=CHILD_ENV,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._reply(200, {"returncode": None, "stdout": "", "stderr": "timeout"})
            return
        self._reply(
            200, {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}
        )

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class Server(socketserver.ThreadingMixIn, HTTPServer):
    """An HTTP server on an already listening socket."""

    address_family = socket.AF_UNIX
    daemon_threads = True

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(("sandbox", 0), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener

    def server_bind(self) -> None:
        """Already bound by the platform."""

    def get_request(self) -> tuple[socket.socket, object]:
        conn, _ = self.socket.accept()
        return conn, ("sandbox", 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--token-fd", type=int)
    parser.add_argument("--log-fd", type=int)
    parser.add_argument("--log-max-bytes", type=int)
    for limit in ("--idle-timeout", "--max-age", "--unclaimed-timeout"):
        parser.add_argument(limit, type=float)  # the real agent's own limits: ignored here
    options = parser.parse_args()
    global TOKEN
    if options.token_fd is not None:
        with os.fdopen(options.token_fd, "rb") as pipe:
            TOKEN = pipe.read().decode().strip()
    if options.log_fd is not None:
        os.close(options.log_fd)
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
    Handler.root = options.root
    listener = socket.socket(fileno=options.fd)
    Server(listener).serve_forever()


main()
