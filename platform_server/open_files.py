"""The platform's own limit on open descriptors."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open descriptors to its hard limit; return it.

    Every open terminal holds several descriptors in the platform (the browser's socket, the
    agent's), so the common default soft limit of 1024 would stop a platform at a few hundred
    sandboxes with "Too many open files"; the hard limit is what the operator allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft
