"""The built front end: esbuild's output folder and the manifest naming its hashed files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# esbuild's "[name]-[hash]" names: the hash is 8 characters of A-Z and 0-9.
HASHED_NAME = re.compile(r"-[A-Z0-9]{8}\.[A-Za-z0-9.]+$")


class AssetsMissing(Exception):
    """The front end has not been built (no manifest.json)."""


@dataclass(frozen=True)
class PageAssets:
    """The files of one page: its script, its stylesheet, chunks to preload."""

    js: str
    css: str | None
    preload: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """What ``frontend/build.mjs`` wrote to ``manifest.json``."""

    pages: dict[str, PageAssets]
    workers: dict[str, str]

    @classmethod
    def parse(cls, data: Any) -> Manifest:
        """Validate the JSON of a manifest."""
        if not isinstance(data, dict):
            msg = "manifest.json is not a JSON object"
            raise ValueError(msg)
        pages = {
            str(name): PageAssets(
                js=str(page["js"]),
                css=str(page["css"]) if page.get("css") else None,
                preload=tuple(str(p) for p in page.get("preload", [])),
            )
            for name, page in dict(data.get("pages", {})).items()
        }
        workers = {str(k): str(v) for k, v in dict(data.get("workers", {})).items()}
        return cls(pages=pages, workers=workers)


def is_hashed(name: str) -> bool:
    """Whether a file name carries a content hash (so it can be cached forever)."""
    return bool(HASHED_NAME.search(name))


class AssetManifest:
    """Reads ``manifest.json`` from the build folder, again whenever a rebuild changed it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cached: tuple[float, Manifest] | None = None

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.folder / "manifest.json"

    def load(self) -> Manifest:
        """The current manifest; ``AssetsMissing`` when the front end is not built."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError as e:
            msg = f"The IDE's front end is not built: no {self.path} (run `make install`)."
            raise AssetsMissing(msg) from e
        if self._cached is None or self._cached[0] != mtime:
            manifest = Manifest.parse(json.loads(self.path.read_text(encoding="utf-8")))
            self._cached = (mtime, manifest)
        return self._cached[1]

    def page(self, name: str) -> PageAssets:
        """The assets of one page."""
        pages = self.load().pages
        if name not in pages:
            msg = f"The IDE's front end has no page {name!r}: rebuild it (make install)."
            raise AssetsMissing(msg)
        return pages[name]
