"""The asyncpg connection pool: timeouts, a ping, and errors that name the server.

Nothing here ever logs or raises a password: `redact_dsn` and `describe_target` are what
messages show, and `scrub` removes the password from texts we did not write (driver errors).
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from opamp_operator.config import ConfigError, StoreSettings

_URL_SCHEMES = ("postgres://", "postgresql://")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_KEYWORD = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
REDACTED = "***"

# Errors worth retrying later: the server is unreachable, restarting, or slow.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
)
# Errors caused by the data itself: retrying the same batch would fail forever.
DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,  # includes the driver's client-side encoding errors
    TypeError,
)


class StoreUnavailable(RuntimeError):
    """PostgreSQL could not be reached; the message names the server, never the password."""


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***` (URL or keyword/value form)."""
    if dsn.startswith(_URL_SCHEMES):
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostinfo = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
            netloc = f"{userinfo}@{hostinfo}"
        query = [
            (key, REDACTED if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        return urlunsplit(
            (parts.scheme, netloc, parts.path, urlencode(query, safe="*"), parts.fragment)
        )
    return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + REDACTED, dsn)


def _password(dsn: str) -> str | None:
    if dsn.startswith(_URL_SCHEMES):
        parts = urlsplit(dsn)
        from_query = dict(parse_qsl(parts.query)).get("password")
        return unquote(parts.password) if parts.password else from_query
    match = _KEYWORD_PASSWORD.search(dsn)
    return match.group(2).strip("'") if match else None


def scrub(text: str, dsn: str | None) -> str:
    """`text` with the DSN's password (if any) replaced, for messages from the driver."""
    password = _password(dsn) if dsn else None
    return text.replace(password, REDACTED) if password else text


def describe_target(dsn: str) -> str:
    """'host:port/database as user', for log lines and errors."""
    if dsn.startswith(_URL_SCHEMES):
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = parts.hostname or query.get("host") or "localhost"
        port = _url_port(parts.netloc) or query.get("port") or "5432"
        database = unquote(parts.path.lstrip("/")) or query.get("dbname") or "(default)"
        user = unquote(parts.username) if parts.username else query.get("user", "(default)")
    else:
        values = {k.lower(): v.strip("'") for k, v in _KEYWORD.findall(dsn)}
        host = values.get("host", "localhost")
        port = values.get("port", "5432")
        database = values.get("dbname", "(default)")
        user = values.get("user", "(default)")
    return f"{host}:{port}/{database} as {user}"


def _url_port(netloc: str) -> str | None:
    # urlsplit(...).port raises on a malformed port; a description must never fail.
    hostinfo = netloc.rsplit("@", 1)[-1]
    if hostinfo.startswith("["):  # [ipv6]:port
        _, _, rest = hostinfo.partition("]")
        return rest[1:] if rest.startswith(":") else None
    _, _, port = hostinfo.partition(":")
    return port or None


async def create_pool(settings: StoreSettings) -> asyncpg.Pool:
    """Open the pool (connecting `pool_min_size` connections); StoreUnavailable on failure."""
    if not settings.dsn:
        raise ConfigError("PostgreSQL DSN is not set (store.dsn)")
    dsn = settings.dsn
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.connect_timeout_seconds,  # per connection attempt
            command_timeout=settings.command_timeout_seconds,  # per statement
            max_inactive_connection_lifetime=300.0,
            server_settings={"application_name": "opamp-operator"},
        )
    except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as error:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL at {describe_target(dsn)}: "
            f"{type(error).__name__}: {scrub(str(error), dsn)}"
        ) from None  # the original may carry the DSN in its args
    assert pool is not None
    return pool


async def ping(pool: asyncpg.Pool, limit_seconds: float = 5.0) -> None:
    """One round trip (`SELECT 1`); raises what the driver raises, or TimeoutError."""
    async with asyncio.timeout(limit_seconds):
        await pool.fetchval("SELECT 1")
