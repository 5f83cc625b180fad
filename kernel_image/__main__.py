"""``python -s -m kernel_image``: start the agent."""

from __future__ import annotations

from kernel_image.app import main

main()
