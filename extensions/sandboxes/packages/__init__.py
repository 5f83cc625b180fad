"""Packages for sandboxes without a network: a read-only package index cache beside the
platform, reached through each agent's loopback relay, and the workspace's installs recorded
in PostgreSQL and put back into every new sandbox (docs/packages.md)."""
