"""What GitOps resolution concluded per agent (config and connection settings), read by the
status writer.

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
        self._settings_problems: dict[str, str] = {}  # agent id -> why no settings are offered

    def observed_generation(self, agent_id: str) -> int | None:
        """The OpAMPAgent generation whose spec has been resolved and handed to the fleet."""
        return self._observed.get(agent_id)

    def problem(self, agent_id: str) -> str | None:
        """Why the agent has no config although some is declared for it (conflict, bad spec)."""
        return self._problems.get(agent_id)

    def settings_problem(self, agent_id: str) -> str | None:
        """Why declared connection settings are not offered (bad spec, missing Secret or key)."""
        return self._settings_problems.get(agent_id)

    def record_settings_problem(self, agent_id: str, problem: str | None) -> str | None:
        """Keep why settings are not offered (None: they are); return what was kept before."""
        before = self._settings_problems.get(agent_id)
        if problem is None:
            self._settings_problems.pop(agent_id, None)
        else:
            self._settings_problems[agent_id] = problem
        return before

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
        self._settings_problems.pop(agent_id, None)
