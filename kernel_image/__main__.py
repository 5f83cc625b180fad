"""``python -s -m kernel_image``: start the agent."""

from __future__ import annotations

import sys

# Tornado's log formatter imports curses to colour lines on a terminal; the agent logs to a file
# with its own format, so the import only costs memory (0.4 MiB, with its libraries). None in
# sys.modules makes "import curses" fail, which tornado.log expects where curses is missing.
sys.modules["curses"] = None  # type: ignore[assignment]

from kernel_image.app import main  # noqa: E402 (after the line above)

main()
