"""Open files: raise the process's soft limit at start, and how many agent connections fit.

Every WebSocket agent holds a socket for its whole session, and so does every HTTP agent
whose client keeps its connection alive between polls (opamp-go's does; our keep-alive
timeout is longer than the usual poll interval). Past the open-files limit `accept()` fails
with EMFILE, and so would the database pool, the Kubernetes clients and the REST API: so the
listener refuses new connections with 503 and Retry-After a little below the limit instead
(`OpAMPListener`, `ListenerSettings.max_connections`), and keeps the rest for those.

Many runtimes start processes with a soft limit of 1,024 under a much higher hard one;
Python does not raise it, so we do (as Go's runtime does since 1.19).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Descriptors kept for everything but agents: the database pool, Kubernetes clients and
#: watches, REST callers, log and certificate files; a quarter of a small limit.
RESERVED = 1024


def raise_open_files_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force
    (None: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return None if soft == resource.RLIM_INFINITY else _try_raise(soft, hard)
    return _try_raise(soft, hard) if soft < hard else soft


def _try_raise(soft: int, hard: int) -> int:
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as error:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, error)
        return soft
    return target


def connection_capacity(limit: int | None) -> int | None:
    """Agent connections that fit under `limit` open files, the reserve kept (None: no cap)."""
    if limit is None:
        return None
    return max(1, limit - min(RESERVED, limit // 4))
