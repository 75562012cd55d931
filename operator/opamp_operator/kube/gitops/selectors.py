"""Kubernetes label selectors (matchLabels, matchExpressions): parsed, matched (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """The selector is not a valid LabelSelector."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: absent keys match too


@dataclass(frozen=True, slots=True)
class Selector:
    """All requirements must hold; no requirement at all selects every object."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def specificity(self) -> int:
        """How many requirements it has (distinct keys and operators): more is narrower."""
        return len(self.requirements)


def parse_selector(spec: Any) -> Selector:
    """A Selector from a LabelSelector as the API returns it (a dict); raises SelectorError."""
    if spec is None:
        return Selector(())
    if not isinstance(spec, Mapping):
        raise SelectorError("selector must be an object with matchLabels and/or matchExpressions")
    requirements: set[Requirement] = set()
    labels = spec.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise SelectorError("matchLabels must be a map of label -> value")
    for key, value in labels.items():
        requirements.add(Requirement(str(key), "In", frozenset({str(value)})))
    expressions = spec.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError("matchExpressions must be a list")
    for expression in expressions:
        requirements.add(_expression(expression))
    ordered = sorted(requirements, key=lambda r: (r.key, r.operator, sorted(r.values)))
    return Selector(tuple(ordered))


def _expression(expression: Any) -> Requirement:
    if not isinstance(expression, Mapping):
        raise SelectorError("each matchExpressions entry must be an object")
    key, operator = expression.get("key"), expression.get("operator")
    values = expression.get("values") or []
    if not isinstance(key, str) or not key:
        raise SelectorError("matchExpressions entry without a key")
    if operator not in _OPERATORS:
        raise SelectorError(f"operator of {key!r} must be one of {', '.join(_OPERATORS)}")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"values of {key!r} must be a list of strings")
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{operator} on {key!r} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{operator} on {key!r} takes no values")
    return Requirement(key, str(operator), frozenset(values))
