"""Kernels: Jupyter's kernel, kernelspec and session APIs for every workspace, served by its
sandbox's agent."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from extensions.kernels.app import KernelsApp

    return [{"module": "extensions.kernels", "app": KernelsApp}]
