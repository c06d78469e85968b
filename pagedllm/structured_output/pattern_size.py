"""How far a JSON schema's regex patterns expand, bounded before xgrammar sees them.

xgrammar writes a schema's ``pattern`` out as grammar rules, a repetition ``{n}`` as n
copies of what it repeats, in time that grows with the square of the expanded length: a
250-byte schema holding ``[a-z]{16000}`` took ~10 s on a thread that every request's
preparation shares (xgrammar 0.2.9, CPU: 1,024 copies 0.05 s, 2,000 0.17 s, 20,000 31 s).
A regex constraint of its own is lowered differently and stays fast; only patterns inside
schemas are measured here. Real patterns expand to tens of characters (a UUID's: 38).
"""

from __future__ import annotations

import re
from typing import Any

# The expanded length of one pattern, and of all of a schema's patterns together.
MAX_PATTERN_EXPANSION = 1024
MAX_SCHEMA_PATTERN_EXPANSION = 16384

_COUNT = re.compile(r"\{(\d+)(,(\d*))?\}")
_HUGE = 10**9  # a count with more digits than this is past every bound anyway


def expanded_length(pattern: str) -> int:
    """Characters (escapes and classes as one) ``pattern`` spells out once every
    ``{n}``/``{n,m}`` is written as copies (the larger bound; ``{n,}`` n + 1). A group's
    alternatives are added, not the longest taken: xgrammar builds them all. ``*``, ``+``
    and ``?`` count as one character: they loop or skip, they do not copy."""
    groups: list[list[int]] = [[0, 0]]  # per open group: finished alternatives, current one
    last = 0  # the size of what a repetition count after it applies to
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "(":
            groups.append([0, 0])
            i += 1
            continue
        if char == ")" and len(groups) > 1:
            done = groups.pop()
            last = done[0] + done[1]
            groups[-1][1] += last
            i += 1
            continue
        if char == "|":
            groups[-1][0] += groups[-1][1]
            groups[-1][1] = 0
            i += 1
            continue
        count = _COUNT.match(pattern, i) if char == "{" else None
        if count is not None:
            groups[-1][1] += last * (_count(count) - 1)  # the repeated part counted once
            i = count.end()
            continue
        i = _class_end(pattern, i) if char == "[" else i + (2 if char == "\\" else 1)
        last = 1
        groups[-1][1] += 1
    return sum(sum(group) for group in groups)


def _count(match: re.Match[str]) -> int:
    low, comma, high = match[1], match[2], match[3]
    if len(low) > 9 or (high and len(high) > 9):
        return _HUGE
    if high:
        return max(int(low), int(high))
    return int(low) + 1 if comma else int(low)


def _class_end(pattern: str, start: int) -> int:
    """The index past ``[...]`` opened at ``start`` (a leading ``]`` or ``^]`` is a member)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def check_schema_patterns(schema: Any) -> None:
    """ValueError naming the bound when a pattern in ``schema`` (parsed JSON, its depth
    already bounded) expands past ``MAX_PATTERN_EXPANSION``, or all of them together past
    ``MAX_SCHEMA_PATTERN_EXPANSION``. Patterns are the string values of ``pattern`` keys
    and the keys of ``patternProperties``."""
    total = 0
    for pattern in _patterns(schema):
        size = expanded_length(pattern)
        if size > MAX_PATTERN_EXPANSION:
            raise ValueError(
                f"the schema's pattern {pattern[:40]!r} expands to {size} characters once its "
                f"repetitions are written out; at most {MAX_PATTERN_EXPANSION} are allowed"
            )
        total += size
    if total > MAX_SCHEMA_PATTERN_EXPANSION:
        raise ValueError(
            f"the schema's patterns expand to {total} characters together; at most "
            f"{MAX_SCHEMA_PATTERN_EXPANSION} are allowed"
        )


def _patterns(schema: Any) -> list[str]:
    found: list[str] = []
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if isinstance(item.get("pattern"), str):
                found.append(item["pattern"])
            if isinstance(item.get("patternProperties"), dict):
                found.extend(item["patternProperties"])
            stack.extend(item.values())
    return found
