"""The HTML shells of the IDE's pages, and their Content-Security-Policy (pure functions)."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from extensions.ide.assets import PageAssets

# A Host header that is a plain host[:port] (anything else is left out of the policy).
PLAIN_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")

# A small favicon inline, so no page request fails and nothing comes from elsewhere.
FAVICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Crect width='16' height='16' rx='3' fill='%230969da'/%3E%3Cpath d='M4 5l3 3-3 3M8 11h4' "
    "stroke='white' stroke-width='1.6' fill='none' stroke-linecap='round'/%3E%3C/svg%3E"
)


def content_security_policy(host: str) -> str:
    """Everything from this origin; the inline styles Monaco and xterm.js set; data: images."""
    connect = "connect-src 'self'"
    if PLAIN_HOST.fullmatch(host):
        # 'self' covers same-host ws(s): in current browsers; older ones need it said.
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            # Monaco and xterm.js position and colour through style attributes and <style>.
            "style-src 'self' 'unsafe-inline'",
            # data: for kernel and notebook images (image/png outputs are base64 data: URLs).
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            # Monaco's language workers: module scripts under /assets/.
            "worker-src 'self'",
            # Nothing is framed. HTML outputs are srcdoc frames: not fetched, so frame-src does
            # not apply; they inherit this policy and are sandboxed (no scripts, no origin).
            "frame-src 'none'",
            connect,
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "object-src 'none'",
        ]
    )


def script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no "</script>", no HTML comments)."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_html(title: str, assets: PageAssets, assets_url: str, config: dict[str, Any]) -> str:
    """The shell of a page that the front end builds: its config, stylesheet and script."""
    links = []
    if assets.css:
        links.append(f'<link rel="stylesheet" href="{escape(assets_url + assets.css)}">')
    links += [f'<link rel="modulepreload" href="{escape(assets_url + p)}">' for p in assets.preload]
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        f'<link rel="icon" href="{FAVICON}">\n'
        + "".join(link + "\n" for link in links)
        + '<script id="jupyter-config-data" type="application/json">'
        f"{script_json(config)}</script>\n"
        f'<script type="module" src="{escape(assets_url + assets.js)}"></script>\n'
        "</head>\n<body>\n"
        "<noscript>This page needs JavaScript.</noscript>\n"
        "</body>\n</html>\n"
    )


def message_html(
    title: str, message: str, link_text: str, link_href: str, stylesheet: str | None
) -> str:
    """A page that only says something (not found, an error), with one way on."""
    css = f'<link rel="stylesheet" href="{escape(stylesheet)}">\n' if stylesheet else ""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        f'<link rel="icon" href="{FAVICON}">\n'
        f"{css}"
        "</head>\n<body>\n"
        '<div class="auth"><main class="auth-card error-page">\n'
        f"<h1>{escape(title)}</h1>\n"
        f'<p id="message">{escape(message)}</p>\n'
        f'<p><a class="button primary" href="{escape(link_href)}">{escape(link_text)}</a></p>\n'
        "</main></div>\n"
        "</body>\n</html>\n"
    )
