"""``PackageIndex``: where sandboxes' package requests go, and what they may fetch."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
from traitlets import Bool, Float, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from extensions.sandboxes.packages.embedded import EmbeddedCache

AGENT_INDEX_PORT = 3141
"""The loopback port of the index inside every sandbox (devpi's, which pip users know)."""
_NAME_SEPARATORS = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """A project name as package indexes compare them (PEP 503)."""
    return _NAME_SEPARATORS.sub("-", name).lower()


class PackageIndex(LoggingConfigurable):
    """The package cache that sandboxes' ``pip install`` reaches through their agent, and the
    limits on what a workspace may fetch from it."""

    enabled = Bool(
        True,
        help="Give sandboxes a package index (pip and uv inside them point at it). False: "
        "sandboxes get none, and `pip install` finds nothing.",
    ).tag(config=True)

    upstream_url = Unicode(
        "https://pypi.org/simple/",
        help="The one index the cache serves (a PEP 503 simple index URL): the public Python "
        "package index by default, or a private mirror. Users cannot choose another.",
    ).tag(config=True)

    cache_url = Unicode(
        "",
        help="URL of a package cache run beside the platform (proxpi: its Kubernetes "
        "Deployment, e.g. http://package-cache:3141). Empty: the platform runs one itself, "
        "caching under cache_dir.",
    ).tag(config=True)

    cache_dir = Unicode(
        help="Folder of the embedded cache's files (default: <data_dir>/package-cache)."
    ).tag(config=True)

    cache_size = Integer(
        5 * 1024**3, help="Bytes of package files the embedded cache keeps (least used go)."
    ).tag(config=True)

    download_timeout = Float(
        600.0,
        help="Seconds the cache may take to download a file from the upstream before the "
        "sandbox's request fails (a sandbox cannot follow a redirect upstream).",
    ).tag(config=True)

    index_ttl = Integer(
        1800, help="Seconds the cache keeps a project's list of files before asking again."
    ).tag(config=True)

    max_file_size = Integer(
        512 * 1024**2, help="Largest package file a sandbox may fetch, in bytes. 0: no limit."
    ).tag(config=True)

    bytes_per_day = Integer(
        5 * 1024**3,
        help="Bytes of package files one workspace may fetch in 24 hours. 0: no limit.",
    ).tag(config=True)

    requests_per_second = Float(
        50.0,
        help="Index requests per second one sandbox may make (bursts of twice as many are "
        "let through). 0: no limit.",
    ).tag(config=True)

    allow = List(
        Unicode(),
        help="If not empty, the only projects sandboxes may install (names as on the index; "
        "'-', '_' and '.' are the same, case does not matter).",
    ).tag(config=True)

    deny = List(
        Unicode(), help="Projects sandboxes may never install (same name rules as allow)."
    ).tag(config=True)

    restore_timeout = Float(
        900.0,
        help="Seconds a new sandbox may spend installing the workspace's packages again "
        "before it opens without the rest.",
    ).tag(config=True)

    data_dir = Unicode("", help="The platform's data folder (set by the platform).")

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        return str(Path(self.data_dir or ".") / "package-cache")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedded: EmbeddedCache | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Start the embedded cache, when no cache_url is given and it is not running yet (in
        the background; ``ready`` waits for it). Called on the first package request, so a
        platform whose sandboxes never install anything never runs it."""
        if not self.enabled or self.cache_url or self.embedded is not None:
            return
        folder = Path(self.cache_dir)
        self.embedded = EmbeddedCache(folder, self.proxpi_environment(folder / "files"), self.log)
        self.embedded.start()

    def proxpi_environment(self, files: Path) -> dict[str, str]:
        """proxpi's settings (it reads its environment only)."""
        return {
            "PROXPI_INDEX_URL": self.upstream_url,
            "PROXPI_EXTRA_INDEX_URLS": "",
            "PROXPI_CACHE_DIR": str(files),
            "PROXPI_CACHE_SIZE": str(self.cache_size),
            "PROXPI_DOWNLOAD_TIMEOUT": f"{self.download_timeout:g}",
            "PROXPI_INDEX_TTL": str(self.index_ttl),
            "PROXPI_LOGGING_LEVEL": "WARNING",
        }

    def session(self) -> aiohttp.ClientSession:
        """The HTTP client of the cache (made on first use, in the running loop)."""
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector | None = None
            if self.embedded is not None:
                connector = aiohttp.UnixConnector(path=str(self.embedded.socket))
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )
        return self._session

    def base_url(self) -> str:
        """Where ``/index/...`` paths are appended."""
        return "http://package-cache" if self.embedded is not None else self.cache_url.rstrip("/")

    async def ready(self, within: float) -> bool:
        """Whether the cache can answer (the embedded one may still be starting)."""
        self.start()
        if self.embedded is None:
            return True
        try:
            async with asyncio.timeout(within):
                await self.embedded.ready.wait()
        except TimeoutError:
            return False
        return True

    def refusal(self, project: str) -> str | None:
        """Why a project may not be fetched, or None."""
        name = normalize(project)
        if any(normalize(p) == name for p in self.deny) or (
            self.allow and all(normalize(p) != name for p in self.allow)
        ):
            return f"Package '{project}' is not allowed by this platform's package policy"
        return None

    async def close(self) -> None:
        """Close the client and stop the embedded cache."""
        if self._session is not None:
            await self._session.close()
        if self.embedded is not None:
            await self.embedded.close()
