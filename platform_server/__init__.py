"""The code execution platform: a multi-user IDE and Jupyter-compatible gateway."""

from importlib.metadata import version

__version__ = version("code-execution-platform")
