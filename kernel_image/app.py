"""Wiring and command line: ``python -s -m kernel_image (--socket P | --fd N | --port N) --root D``.

The token is read once from an inherited pipe (``--token-fd N``, then closed), or else taken out
of the environment variable ``AGENT_TOKEN``; never from argv, which ``ps`` shows. With
``--token-on-first-contact`` the agent starts without one and the first ``PUT /api/token`` sets
it, kept only in the agent's memory (a Kubernetes pod's environment is readable by its user code
through its init's ``/proc/1/environ``). With
``--log-fd N`` the agent logs to that descriptor only, and its stdin, stdout and stderr (which
kernels inherit) become ``/dev/null``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets, bind_unix_socket

from kernel_image import __version__, file_handlers, files, handlers
from kernel_image.auth import AgentHandler, AgentToken, ApiError
from kernel_image.config import AgentConfig
from kernel_image.handlers import MIN_TOKEN_LENGTH
from kernel_image.kernels import Kernels, KernelsConfig
from kernel_image.lazy_routes import add_lazy_routes
from kernel_image.lifetime import Lifetime, Limits
from kernel_image.lsp_session import LanguageServerLimits, LanguageServers
from kernel_image.lsp_specs import default_specs
from kernel_image.package_channel import PackageChannel, PackageSocket
from kernel_image.package_recorder import EnvironmentRecorder, InstallHandler
from kernel_image.package_relay import INDEX_PREFIX, serve_index
from kernel_image.pyenv import WorkspaceEnv
from kernel_image.sync import DEFAULT_IGNORE, Ignore, SyncChannel, Watcher
from kernel_image.sync_socket import SyncSocket
from kernel_image.terminals import TerminalManager
from kernel_image.websocket import TerminalSocket

log = logging.getLogger("kernel_image")

TOKEN_ENV = "AGENT_TOKEN"  # noqa: S105 (the variable's name, not a secret)
MAX_MESSAGE_BYTES = 1024 * 1024
"""The largest WebSocket message a client may send (bigger ones close the socket, 1009)."""
PING_INTERVAL = 30.0
"""Seconds between WebSocket pings; a client that does not answer is disconnected."""
MAX_SYNC_BYTES = 10 * 1024**2
"""The largest file file sync sends to the platform, unless ``--max-sync-bytes`` says."""
PR_SET_DUMPABLE = 4
LOG_FULL_NOTICE = b"[agent] log size limit reached: further lines are dropped\n"


LAZY_ROUTES = {
    r"/(api/)?kernel.*": "kernel_image.kernel_handlers",
    r"/lsp/.*": "kernel_image.lsp_handlers",
}
"""Paths served by a handlers module imported at the first request to one of them."""


class NotFoundHandler(AgentHandler):
    """Any other URL: 401 without the token, else a JSON 404."""

    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, "no such endpoint")


def make_app(
    config: AgentConfig,
    terminals: TerminalManager,
    sync_channel: SyncChannel,
    kernels: Kernels | None = None,
    lifetime: Lifetime | None = None,
    packages: Packages | None = None,
    language_servers: LanguageServers | None = None,
) -> web.Application:
    """The Tornado application: every route, the settings handlers read."""
    app = web.Application(
        [
            *handlers.default_handlers,
            *file_handlers.default_handlers,
            (r"/terminals/websocket/([^/]+)", TerminalSocket),
            (r"/api/sync", SyncSocket),
            (r"/api/packages", PackageSocket),
            (r"/api/packages/install", InstallHandler),
        ],
        default_handler_class=NotFoundHandler,
        agent_config=config,
        agent_token=AgentToken(config.token),
        terminal_manager=terminals,
        sync_channel=sync_channel,
        kernels=kernels or Kernels(KernelsConfig(root=config.root)),
        lifetime=lifetime,
        language_servers=language_servers
        or LanguageServers(default_specs(), config.root, LanguageServerLimits()),
        package_channel=(packages or Packages()).channel,
        workspace_env=packages.env if packages else None,
        environment_recorder=packages.recorder if packages else None,
        started=time.time(),
        websocket_max_message_size=MAX_MESSAGE_BYTES,
        websocket_ping_interval=PING_INTERVAL,
        xsrf_cookies=False,
        serve_traceback=False,
    )
    add_lazy_routes(app, LAZY_ROUTES)
    return app


@dataclasses.dataclass
class Packages:
    """The package channel, and with ``--workspace-env`` the workspace's venv and its
    recorder (``POST /api/packages/install`` answers 404 without them)."""

    channel: PackageChannel = dataclasses.field(default_factory=PackageChannel)
    env: WorkspaceEnv | None = None
    recorder: EnvironmentRecorder | None = None


def defaults(settings: type[Any]) -> dict[str, Any]:
    """The defaults of a settings dataclass's fields: the command line's defaults are read from
    there, so each is written once."""
    return {field.name: field.default for field in dataclasses.fields(settings)}


def in_bytes(size: int) -> str:
    """A size in bytes as its help text says it (``256 KiB``)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        msg = "must be 0 or more"
        raise argparse.ArgumentTypeError(msg)
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see docs/agent-protocol.md)."""
    agent, kernels, limits = defaults(AgentConfig), defaults(KernelsConfig), defaults(Limits)
    lsp = defaults(LanguageServerLimits)
    parser = argparse.ArgumentParser(
        prog="python -s -m kernel_image",
        description="The sandbox agent: terminals, files and health over HTTP + WebSocket. "
        f"The token comes from --token-fd, else ${TOKEN_ENV}, or with --token-on-first-contact "
        "from the first PUT /api/token.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="bind a Unix socket (mode 0600)")
    where.add_argument(
        "--fd", type=int, metavar="N", help="serve on an inherited, listening socket"
    )
    where.add_argument("--port", type=int, metavar="N", help="listen on TCP (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP address (default 127.0.0.1)")
    parser.add_argument("--root", required=True, help="the folder files and terminals use")
    parser.add_argument(
        "--max-terminals",
        type=_size,
        default=agent["max_terminals"],
        help=f"terminals at once (default {agent['max_terminals']})",
    )
    parser.add_argument(
        "--scrollback-bytes",
        type=_size,
        default=agent["scrollback_bytes"],
        help="output kept per terminal for reconnecting clients, in bytes "
        f"(default {in_bytes(agent['scrollback_bytes'])})",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=_size,
        default=agent["max_file_bytes"],
        help=f"largest PUT /api/files body, in bytes (default {in_bytes(agent['max_file_bytes'])})",
    )
    parser.add_argument(
        "--max-tree-bytes",
        type=_size,
        default=agent["max_tree_bytes"],
        help="largest PUT /api/tree body and total of its files, in bytes "
        f"(default {in_bytes(agent['max_tree_bytes'])})",
    )
    parser.add_argument(
        "--stalled-client-timeout",
        type=float,
        default=agent["stalled_client_timeout"],
        help="seconds a terminal waits for a client to take output before dropping it; "
        f"default {agent['stalled_client_timeout']:g}",
    )
    parser.add_argument(
        "--max-sync-bytes",
        type=_size,
        default=MAX_SYNC_BYTES,
        help="largest file sent to the platform by file sync, in bytes "
        f"(default {in_bytes(MAX_SYNC_BYTES)})",
    )
    parser.add_argument(
        "--sync-ignore",
        default=",".join(DEFAULT_IGNORE),
        help="comma-separated patterns never synced: 'dir/' for a folder anywhere, else a "
        f"file name pattern (default {','.join(DEFAULT_IGNORE)})",
    )
    parser.add_argument(
        "--max-kernels",
        type=_size,
        default=kernels["max_kernels"],
        help=f"Jupyter kernels at once (default {kernels['max_kernels']})",
    )
    parser.add_argument(
        "--kernel-idle-timeout",
        type=float,
        default=kernels["idle_timeout"],
        help="seconds an idle kernel without clients lives on; 0 never culls "
        f"(default {kernels['idle_timeout']:g})",
    )
    parser.add_argument(
        "--token-fd",
        type=int,
        metavar="N",
        help=f"read the token from this inherited descriptor, then close it (else ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--token-on-first-contact",
        action="store_true",
        help="start without a token: every request answers 503 until the first PUT /api/token "
        f'{{"token": "..."}} sets it (no --token-fd, no ${TOKEN_ENV})',
    )
    parser.add_argument(
        "--log-fd",
        type=int,
        metavar="N",
        help="log to this inherited descriptor (not inherited further); stdin, stdout and "
        "stderr become /dev/null. Default: log to stderr",
    )
    parser.add_argument(
        "--log-max-bytes",
        type=_size,
        default=0,
        help="stop logging to --log-fd once its file holds this many bytes; 0: no limit",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=limits["idle_timeout"],
        help="end the sandbox after this many seconds without activity once a workspace's "
        "files are loaded (never while changes wait for the platform); 0: never (default)",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=limits["max_age"],
        help="end the sandbox this many seconds after the agent started; 0: never (default)",
    )
    parser.add_argument(
        "--unclaimed-timeout",
        type=float,
        default=limits["unclaimed_timeout"],
        help="end the sandbox after this many seconds without any request while no "
        "workspace's files are loaded (a warm-pool sandbox left alone); 0: never (default)",
    )
    parser.add_argument(
        "--spare-kernel",
        action="store_true",
        help="start a kernel ahead of time: the first POST /api/kernels gets it, ready",
    )
    parser.add_argument(
        "--spare-kernel-timeout",
        type=float,
        default=kernels["spare_timeout"],
        help="seconds after a workspace's files are loaded before an unused spare kernel is "
        f"shut down; 0: never (default {kernels['spare_timeout']:g})",
    )
    parser.add_argument(
        "--workspace-env",
        action="store_true",
        help="make the workspace's Python venv at ROOT/.venv (over this interpreter's "
        "packages), give it to terminals and kernels, and report what is installed in it",
    )
    parser.add_argument(
        "--package-index-port",
        type=_size,
        default=0,
        help="serve the package index relay on 127.0.0.1:N and point pip and uv at it; "
        "0: none (default)",
    )
    parser.add_argument(
        "--lsp-idle-timeout",
        type=float,
        default=lsp["idle_timeout"],
        help="seconds a language server lives on without any client; 0: until the agent "
        f"stops (default {lsp['idle_timeout']:g})",
    )
    parser.add_argument(
        "--lsp-memory-limit",
        type=_size,
        default=lsp["memory_limit"],
        help="resident bytes a language server and its subprocesses may use before they are "
        f"killed (and started again by the next client); 0: no limit "
        f"(default {in_bytes(lsp['memory_limit'])})",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--version", action="version", version=__version__)
    return parser.parse_args(argv)


def listen(args: argparse.Namespace) -> tuple[list[socket.socket], str]:
    """The listening sockets the command line asks for, and how to describe them."""
    if args.fd is not None:
        try:
            sock = socket.socket(fileno=args.fd)
        except OSError as e:
            msg = f"file descriptor {args.fd} is not a socket: {e.strerror}"
            raise SystemExit(msg) from None
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            msg = f"file descriptor {args.fd} is not a listening socket"
            raise SystemExit(msg)
        # Terminals must not inherit the agent's socket.
        sock.set_inheritable(False)
        sock.setblocking(False)
        return [sock], f"fd:{args.fd}"
    if args.socket is not None:
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            sock = bind_unix_socket(args.socket, mode=0o600)
        finally:
            os.umask(old_umask)
        return [sock], f"unix:{args.socket}"
    sockets = bind_sockets(args.port, address=args.host)
    host, port = sockets[0].getsockname()[:2]
    return sockets, f"{host}:{port}"


def forbid_inspection() -> None:
    """Make the agent non-dumpable: user code (the same uid) cannot ptrace it, read its memory
    or ``/proc/<pid>/environ``, nor take its descriptors (``pidfd_getfd``).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as e:
        log.warning("cannot make the agent non-dumpable: %s", e)


async def serve(
    config: AgentConfig, sockets: list[socket.socket], where: str, args: argparse.Namespace
) -> None:
    """Serve until SIGTERM or SIGINT, then end every terminal."""
    terminals = TerminalManager(config)
    kernels = Kernels(
        KernelsConfig(
            root=config.root,
            max_kernels=args.max_kernels,
            idle_timeout=args.kernel_idle_timeout,
            stalled_client_timeout=config.stalled_client_timeout,
            spare=args.spare_kernel,
            spare_timeout=args.spare_kernel_timeout,
        )
    )
    kernels.start_culling()
    patterns = [p.strip() for p in args.sync_ignore.split(",") if p.strip()]
    watcher = Watcher(config.root, Ignore(patterns))
    watcher.start()
    files.written_hook = watcher.note_written
    sync_channel = SyncChannel(watcher, args.max_sync_bytes)
    sync_channel.start()
    packages = start_packages(config.root, args.workspace_env, args.package_index_port)
    lifetime = Lifetime(
        Limits(args.idle_timeout, args.max_age, args.unclaimed_timeout),
        activity=lambda: latest(terminals.last_input, kernels.last_activity),
        unsynced=lambda: sync_channel.has_unsynced() or packages.channel.has_unreported(),
        on_claim=kernels.spare.expire_later if kernels.spare else None,
    )
    if kernels.spare is not None:
        kernels.spare.prepare()
    language_servers = LanguageServers(
        default_specs(),
        config.root,
        LanguageServerLimits(
            idle_timeout=args.lsp_idle_timeout, memory_limit=args.lsp_memory_limit
        ),
    )
    server = HTTPServer(
        make_app(config, terminals, sync_channel, kernels, lifetime, packages, language_servers),
        max_body_size=file_handlers.MAX_SMALL_BODY,
    )
    server.add_sockets(sockets)
    stop = asyncio.Event()
    watch = asyncio.create_task(lifetime.watch(stop))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent %s | listening on %s, root %s", __version__, where, config.root)
    await stop.wait()
    log.info("agent | stopping")
    watch.cancel()
    server.stop()
    await asyncio.gather(terminals.shutdown(), kernels.shutdown(), language_servers.shutdown())
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.close_all_connections(), 2)


def start_packages(root: str, workspace_env: bool, index_port: int) -> Packages:
    """The package channel; the workspace venv (its variables in this process's environment,
    which terminals, kernels and the language server inherit) and the loopback index relay, as
    the command line asks."""
    packages = Packages()
    if index_port:
        try:
            serve_index(packages.channel, index_port)
        except OSError as e:
            log.warning("packages | no index relay on port %d: %s", index_port, e.strerror)
            index_port = 0
    if workspace_env:
        index_url = f"http://127.0.0.1:{index_port}{INDEX_PREFIX}" if index_port else None
        packages.env = WorkspaceEnv(root, index_url)
        packages.env.create()
        os.environ.update(packages.env.variables())
        packages.recorder = EnvironmentRecorder(packages.env, packages.channel)
        packages.recorder.start()
    return packages


def latest(*times: float | None) -> float | None:
    """The latest of some times, None if there is none."""
    known = [t for t in times if t is not None]
    return max(known) if known else None


class CappedLog:
    """A text stream writing to a descriptor until its file holds ``limit`` bytes (0: no
    limit); write errors (a closed pipe, a full disk) drop the line: the agent goes on."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.full = False

    def write(self, text: str) -> int:
        """Write ``text`` whole, or nothing."""
        data = text.encode(errors="replace")
        try:
            if self.limit and os.fstat(self.fd).st_size + len(data) > self.limit:
                if not self.full:
                    self.full = True
                    os.write(self.fd, LOG_FULL_NOTICE)
                return len(text)
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            pass
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""

    def isatty(self) -> bool:
        """Never a terminal."""
        return False


def redirect_output(fd: int, limit: int) -> None:
    """Log to ``fd`` only (``CappedLog``): it is not inherited, and stdin, stdout and stderr
    become /dev/null, so that no kernel or terminal inherits a descriptor of the host."""
    try:
        os.set_inheritable(fd, False)
    except OSError as e:
        sys.exit(f"kernel_image: --log-fd {fd}: {e.strerror}")
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)
    sys.stdout = sys.stderr = CappedLog(fd, limit)


def read_token(token_fd: int | None) -> str:
    """The token, from ``token_fd`` (read to its end, then closed) or ``$AGENT_TOKEN``; the
    variable is removed from the environment either way."""
    token = os.environ.pop(TOKEN_ENV, "")
    if token_fd is None:
        return token
    try:
        with os.fdopen(token_fd, "rb") as pipe:
            return pipe.read().decode().strip()
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"kernel_image: cannot read the token from --token-fd {token_fd}: {e}")


def configure_logging(level: str) -> None:
    """Log to stderr; request lines only at DEBUG."""
    logging.basicConfig(
        level=level.upper(),
        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("tornado.access").setLevel(logging.WARNING)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else None (asyncio's own).

    Every terminal keystroke crosses the agent's loop twice (input, then its echo); uvloop
    takes less time per loop iteration than asyncio's pure-Python selector loop.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m kernel_image``."""
    # First: nothing of the sandbox may read the token or take a descriptor from here on.
    forbid_inspection()
    args = parse_args(argv)
    if args.log_fd is not None:
        redirect_output(args.log_fd, args.log_max_bytes)
    token = read_token(args.token_fd)
    # Only the agent needs its own import path; terminals and kernels get the user's Python.
    os.environ.pop("PYTHONPATH", None)
    configure_logging(args.log_level)
    if args.token_on_first_contact:
        if token or args.token_fd is not None:
            sys.exit(
                "kernel_image: --token-on-first-contact takes its token from PUT /api/token, "
                f"not from --token-fd or ${TOKEN_ENV}"
            )
    elif len(token) < MIN_TOKEN_LENGTH:
        sys.exit(
            f"kernel_image: give a token of {MIN_TOKEN_LENGTH}+ characters "
            f"(--token-fd or ${TOKEN_ENV})"
        )
    root = os.path.realpath(args.root)
    if not Path(root).is_dir():
        sys.exit(f"kernel_image: --root {args.root!r} is not a folder")
    config = AgentConfig(
        root=root,
        token=token,
        max_terminals=args.max_terminals,
        scrollback_bytes=args.scrollback_bytes,
        max_file_bytes=args.max_file_bytes,
        max_tree_bytes=args.max_tree_bytes,
        stalled_client_timeout=args.stalled_client_timeout,
    )
    sockets, where = listen(args)
    made_socket = args.socket
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(config, sockets, where, args))
    finally:
        if made_socket:
            with contextlib.suppress(OSError):
                Path(made_socket).unlink()
