"""The code execution platform: a multi-user IDE and Jupyter-compatible gateway."""

__version__ = "0.1.0"
