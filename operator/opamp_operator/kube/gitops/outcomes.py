"""What GitOps resolution concluded per agent, read by the status writer.

A separate object (not the controller itself) so that the status writer and the GitOps
controller can be built in either order, each with everything it needs: the controller
records here and asks the writer to rewrite; the writer reads here when it writes.
"""

from __future__ import annotations


class ConfigOutcomes:
    """The OpAMPAgent generation resolved per agent, and why an agent has no config."""

    def __init__(self) -> None:
        self._observed: dict[str, int] = {}  # agent id -> generation resolved
        self._problems: dict[str, str] = {}  # agent id -> why it has no config

    def observed_generation(self, agent_id: str) -> int | None:
        """The OpAMPAgent generation whose spec has been resolved and handed to the fleet."""
        return self._observed.get(agent_id)

    def problem(self, agent_id: str) -> str | None:
        """Why the agent has no config although some is declared for it (conflict, bad spec)."""
        return self._problems.get(agent_id)

    def record(self, agent_id: str, generation: int | None, problem: str | None) -> bool:
        """Keep one resolution's outcome; True when the CR status must be rewritten."""
        changed = False
        if self._problems.get(agent_id) != problem:
            changed = True
            if problem is None:
                self._problems.pop(agent_id, None)
            else:
                self._problems[agent_id] = problem
        if generation is not None and self._observed.get(agent_id) != generation:
            self._observed[agent_id] = generation
            changed = True
        return changed

    def forget(self, agent_id: str) -> None:
        self._observed.pop(agent_id, None)
        self._problems.pop(agent_id, None)
