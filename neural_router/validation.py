"""Readable messages for invalid input: configuration files (model pool, training and serving YAML)
and lists of bad rows or lines.

pydantic's own message is thorough but written for developers (``models.0.input_price_per_1m`` and
a documentation link per error). :func:`describe` turns it into one line per problem that says where
(``models[0] 'gpt-x'.input_price_per_1m``), what is wrong and what value was given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import ValidationError

SECRET_HINTS = ("key", "secret", "password")   # a field whose name has one of these never shows its value
MAX_LISTED = 20   # problems named in one message; the rest are counted


def problem_list(problems: list[str], total: int | None = None) -> str:
    """Indented lines naming the first ``MAX_LISTED`` of ``problems``, then how many more there are
    (of ``total``, when only the first few were kept)."""
    total = len(problems) if total is None else total
    more = total - min(len(problems), MAX_LISTED)
    return "\n".join(f"  {p}" for p in problems[:MAX_LISTED]) + (f"\n  ... and {more} more" if more else "")


class Problems:
    """Problems found while reading input, collected so that all of them can be reported at once:
    the first ``MAX_LISTED`` kept for the message, every one counted (a huge bad file costs no memory)."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.count = 0

    def add(self, problem: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append(problem)

    def __bool__(self) -> bool:
        return self.count > 0

    def lines(self) -> str:
        """:func:`problem_list` of them."""
        return problem_list(self.listed, self.count)


def _where(loc: tuple, raw: Any) -> str:
    """``("models", 0, "input_price_per_1m")`` -> ``models[0] 'a'.input_price_per_1m`` (the list item's
    ``name`` where the raw input has one)."""
    out, node = "", raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, (list, tuple)) and -len(node) <= part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" {node['name']!r}"
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def describe(error: ValidationError, raw: Any = None) -> str:
    """One line per problem (as :func:`problem_list` lists them): ``where: message (got value)``, no
    value for secrets. An error on a container whose items have errors of their own (a list that is
    "too short" only because its items failed) is left out."""
    errors = error.errors()
    locs = [tuple(e["loc"]) for e in errors]
    lines = []
    for e, loc in zip(errors, locs):
        if any(len(other) > len(loc) and other[:len(loc)] == loc for other in locs):
            continue
        msg = "missing (required)" if e["type"] == "missing" else e["msg"]
        given = e.get("input")
        secret = any(h in str(part).lower() for part in loc for h in SECRET_HINTS)
        shown = ("" if e["type"] == "missing" or secret or isinstance(given, (dict, list, tuple))
                 else f" (got {given!r})")
        lines.append(f"{_where(loc, raw)}: {msg}{shown}")
    return problem_list(lines)


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, object, None)`` for each non-blank JSON Lines line holding a JSON object, and
    ``(line number, None, what is wrong)`` for one that does not."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, f"not valid JSON ({e.msg}, column {e.colno})"
            continue
        if isinstance(rec, dict):
            yield n, rec, None
        else:
            yield n, None, f"expected a JSON object, got {type(rec).__name__}"
