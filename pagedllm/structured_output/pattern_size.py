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

from pagedllm import json_nesting

# The expanded length of one pattern, and of all of a schema's patterns together.
MAX_PATTERN_EXPANSION = 1024
MAX_SCHEMA_PATTERN_EXPANSION = 16384

# xgrammar reads spaces inside the braces too (``a{ 8000}``, ``a{1, 3000}``).
_COUNT = re.compile(r"\{\s*(\d+)\s*(?:(,)\s*(\d*)\s*)?\}")
# Sizes saturate here: past every bound, and a nested repetition's product stays a small
# integer (``((a){999999999}){999999999}...`` would otherwise grow without end).
_CAP = MAX_SCHEMA_PATTERN_EXPANSION + 1
# A group's opening that is not part of what it matches: (?: (?= (?! (?<= (?<! (?<name>.
_GROUP_PREFIX = re.compile(r"\?(?::|=|!|<=|<!|P?<[A-Za-z_][A-Za-z0-9_]*>)")
# An escape that spells one character with several: \uXXXX, \xXX.
_LONG_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2})")
# String formats whose grammars cost ~3-9 ms and ~0.5 MB each to compile (xgrammar 0.2.9,
# CPU): a 230 KB schema of 5,000 email fields took 62 s and 2.5 GB of the engine process.
_COSTLY_FORMATS = frozenset({"email", "idn-email", "uri", "uri-reference", "iri",
                             "iri-reference", "hostname", "idn-hostname", "ipv6"})  # fmt: skip
MAX_COSTLY_FORMATS = 64


def expanded_length(pattern: str) -> int:
    """Characters (escapes and classes as one) ``pattern`` spells out once every
    ``{n}``/``{n,m}`` is written as copies (the larger bound; ``{n,}`` n + 1), saturating
    just past ``MAX_SCHEMA_PATTERN_EXPANSION``. A group's alternatives are added, not the
    longest taken: xgrammar builds them all. ``*``, ``+`` and ``?`` count as one
    character: they loop or skip, they do not copy."""
    groups: list[list[int]] = [[0, 0]]  # per open group: finished alternatives, current one
    last = 0  # the size of what a repetition count after it applies to
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "(":
            groups.append([0, 0])
            prefix = _GROUP_PREFIX.match(pattern, i + 1)
            i = prefix.end() if prefix else i + 1
            continue
        if char == ")" and len(groups) > 1:
            done = groups.pop()
            last = min(done[0] + done[1], _CAP)
            groups[-1][1] = min(groups[-1][1] + last, _CAP)
            i += 1
            continue
        if char == "|":
            groups[-1][0] = min(groups[-1][0] + groups[-1][1], _CAP)
            groups[-1][1] = 0
            i += 1
            continue
        count = _COUNT.match(pattern, i) if char == "{" else None
        if count is not None:  # the repeated part is counted once already
            added = min(last * max(_count(count) - 1, 0), _CAP)
            groups[-1][1] = min(groups[-1][1] + added, _CAP)
            i = count.end()
            continue
        i = _atom_end(pattern, i)
        last = 1
        groups[-1][1] = min(groups[-1][1] + 1, _CAP)
    return min(sum(sum(group) for group in groups), _CAP)


def _count(match: re.Match[str]) -> int:
    low, comma, high = match[1], match[2], match[3]
    if len(low) > 9 or (high and len(high) > 9):
        return _CAP  # past every bound (and int() refuses past 4,300 digits)
    if high:
        return max(int(low), int(high))
    return int(low) + 1 if comma else int(low)


def _atom_end(pattern: str, start: int) -> int:
    """The index past the one-character atom at ``start``: a class, an escape, a char."""
    if pattern[start] == "[":
        return _class_end(pattern, start)
    if pattern[start] == "\\":
        long_escape = _LONG_ESCAPE.match(pattern, start)
        return long_escape.end() if long_escape else start + 2
    return start + 1


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
    already bounded) expands past ``MAX_PATTERN_EXPANSION``, all of them together past
    ``MAX_SCHEMA_PATTERN_EXPANSION``, or it names more than ``MAX_COSTLY_FORMATS`` costly
    string formats. Patterns are the string values of ``pattern`` keys and the keys of
    ``patternProperties``, wherever they stand: a property may be named ``enum`` or
    ``const``, so no key is skipped (a pattern inside an example is measured too)."""
    patterns, formats = _patterns(schema)
    if formats > MAX_COSTLY_FORMATS:
        raise ValueError(
            f"the schema has {formats} strings of the formats {sorted(_COSTLY_FORMATS)}; "
            f"at most {MAX_COSTLY_FORMATS} are allowed (each compiles to a large grammar)"
        )
    total = 0
    for pattern in patterns:
        size = expanded_length(pattern)
        if size > MAX_PATTERN_EXPANSION:
            spelled = f"more than {_CAP - 1}" if size == _CAP else str(size)
            raise ValueError(
                f"the schema's pattern {pattern[:40]!r} expands to {spelled} characters once "
                f"its repetitions are written out; at most {MAX_PATTERN_EXPANSION} are allowed"
            )
        total += size
    if total > MAX_SCHEMA_PATTERN_EXPANSION:
        raise ValueError(
            f"the schema's patterns expand to {total} characters together; at most "
            f"{MAX_SCHEMA_PATTERN_EXPANSION} are allowed"
        )


def _patterns(schema: Any) -> tuple[list[str], int]:
    """Every pattern in ``schema``, and how many costly formats it names."""
    found: list[str] = []
    formats = 0
    for item in json_nesting.objects(schema):
        if isinstance(item.get("pattern"), str):
            found.append(item["pattern"])
        if isinstance(item.get("patternProperties"), dict):
            found.extend(item["patternProperties"])
        kind = item.get("format")  # a property may be named "format": any value
        formats += isinstance(kind, str) and kind in _COSTLY_FORMATS
    return found, formats
