"""Where the transports wait for a new session's history row before the first reply.

A session the agent was answered for must survive a SIGKILL of the operator (issue 15):
so the transport, when a message opened a session (`Fleet.sessions_opened` moved), awaits
`SessionLedger.recorded()` before it sends the reply. The store implements it as a group
commit (one transaction for every session opened within a few milliseconds); without a
store, `NoLedger` answers at once.
"""

from __future__ import annotations

from typing import Protocol


class SessionLedger(Protocol):
    async def recorded(self) -> None:
        """Return once every session opened so far is committed (or the bounded wait ends)."""


class NoLedger:
    async def recorded(self) -> None:
        return None


NO_LEDGER = NoLedger()
