"""A request's structured-output constraint as an xgrammar ``Grammar``.

Building the grammar needs no tokenizer, so it runs when the request is validated: a bad
schema, regex or grammar is refused there with xgrammar's own account of the problem,
before anything enters the engine. The engine builds it again and compiles it against the
tokenizer on its compile threads (``manager.py``), never on its loop. What may cost time is
bounded first: the constraint's size (``envs.max_grammar_bytes``), a JSON schema's depth
(``json_nesting``; its lowering takes time cubic in the depth) and how far its regex
patterns expand (``pattern_size``; quadratic in that).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pagedllm import envs, json_nesting
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.pattern_size import check_schema_patterns

# The most whitespace characters a JSON-schema grammar allows between two tokens of JSON.
# Unbounded (vLLM's default), a small model at temperature 1 sometimes emits newlines until
# max_tokens and the reply is not JSON; 24 still allows indented output (a newline and 12
# levels of two spaces, or 5 of four).
MAX_JSON_WHITESPACE = 24


@dataclass(frozen=True)
class GrammarSpec:
    """A validated constraint: the grammar and a key equal for equal constraints."""

    key: str
    grammar: Any  # xgrammar.Grammar


def constraint_key(params: StructuredOutputsParams) -> str:
    """A key equal for constraints that build the same grammar, made without building it
    (the engine's compile cache looks it up on its loop)."""
    kind = params.kind
    source = params.json if kind == "json" else "" if kind == "json_object" else _source(params)
    if not isinstance(source, str):
        json_nesting.check_depth(source, "the schema")  # json.dumps recurses
        source = json.dumps(source)
    options = (
        f"ws={not params.disable_any_whitespace}<={MAX_JSON_WHITESPACE},"
        f"closed={params.disable_additional_properties}"
    )
    return f"{kind}:{options}:{source}"


def build_grammar_spec(params: StructuredOutputsParams) -> GrammarSpec:
    """Raises ValueError naming the problem when the constraint is not valid, or is larger
    than ``envs.max_grammar_bytes`` or (a JSON schema) nests past ``json_nesting``'s limit."""
    import xgrammar as xgr

    if params.whitespace_pattern is not None:
        raise ValueError(
            "structured outputs whitespace_pattern is not supported by the xgrammar backend; "
            "use disable_any_whitespace to forbid whitespace outside JSON strings."
        )
    kind = params.kind
    try:
        if kind == "json":
            schema = _json_schema(params)
            grammar = _json_string_chars_fixed(
                xgr.Grammar.from_json_schema(
                    schema,
                    any_whitespace=not params.disable_any_whitespace,
                    max_whitespace_cnt=MAX_JSON_WHITESPACE,
                )
            )
        elif kind == "json_object":
            grammar = xgr.Grammar.builtin_json_grammar()
        else:
            source = _source(params)
            _check_size(kind, source)
            grammar = _GRAMMAR_OF[kind](source)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"Invalid structured outputs {kind}: {_first_line(exc)}") from None
    return GrammarSpec(constraint_key(params), grammar)


def _source(params: StructuredOutputsParams) -> str:
    """The text a regex, choice, grammar or structural-tag constraint is built from (the
    choices as EBNF)."""
    if params.kind == "choice":
        assert params.choice is not None
        return choice_ebnf(params.choice)
    source = getattr(params, params.kind)
    assert isinstance(source, str)
    return source


def _check_size(kind: str, source: str) -> None:
    size, limit = len(source.encode()), envs.max_grammar_bytes()
    if size > limit:
        raise ValueError(
            f"the {kind} constraint is {size} bytes; the limit is {limit} "
            "(PAGEDLLM_MAX_GRAMMAR_BYTES)"
        )


def choice_ebnf(choices: list[str]) -> str:
    """One of the strings exactly. JSON string literals are valid EBNF literals."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


# xgrammar 0.2.8 lowers a string with minLength/maxLength to a bounded repetition of this
# class, which lets raw control characters (a tab) in: strict JSON parsers reject them
# (xgrammar issues 800 and 880). The repetition stays over one character class, now
# without the control characters: an alternation that also admitted escapes would make
# every character of such a string miss xgrammar's token-mask cache (fills measured 100x
# slower), so escapes stay out of length-bounded strings, as in xgrammar itself.
_BOUNDED_STRING_CHAR = r"[^\"\\\r\n]"
_JSON_STRING_CHAR = r"[^\0-\x1f\"\\]"


def _json_string_chars_fixed(grammar: Any) -> Any:
    import xgrammar as xgr

    text = str(grammar)
    if _BOUNDED_STRING_CHAR not in text:
        return grammar
    fixed = text.replace(_BOUNDED_STRING_CHAR, _JSON_STRING_CHAR)
    return xgr.Grammar.from_ebnf(fixed, root_rule_name="root")


def _json_schema(params: StructuredOutputsParams) -> str:
    schema = params.json
    if isinstance(schema, str):
        try:
            schema = json_nesting.loads(schema, "the schema")
        except json.JSONDecodeError as exc:
            raise ValueError(f"the schema is not valid JSON ({exc})") from None
    else:
        json_nesting.check_depth(schema, "the schema")
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"a JSON schema is an object, got {type(schema).__name__}")
    if params.disable_additional_properties:
        schema = _no_additional_properties(schema)
    text = json.dumps(schema)
    _check_size("json", text)  # first: measuring the patterns walks all of it
    check_schema_patterns(schema)
    _check_refs(schema)
    return text


def _check_refs(schema: Any) -> None:
    """ValueError for a ``$ref`` that points outside the schema (a file or a URL): nothing
    is fetched, and xgrammar, logging a warning, would leave such a value unconstrained."""
    for item in json_nesting.objects(schema):
        ref = item.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            raise ValueError(
                f"the schema's $ref {ref[:80]!r} points outside the schema; only "
                "references inside it ('#/...') are supported (nothing is fetched)"
            )


def _no_additional_properties(schema: Any) -> Any:
    """Every object schema closed: ``additionalProperties: false`` throughout."""
    if isinstance(schema, list):
        return [_no_additional_properties(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _no_additional_properties(v) for k, v in schema.items()}
    if closed.get("type") == "object" or "properties" in closed:
        closed["additionalProperties"] = False
    return closed


def _cfg(text: str) -> Any:
    """EBNF (GBNF, ``rule ::= ...``) or, failing the ``::=`` mark, Lark (``start: ...``)."""
    import xgrammar as xgr

    if "::=" in text:
        return xgr.Grammar.from_ebnf(text)
    return xgr.Grammar.from_lark(text)


def _structural_tag(text: str) -> Any:
    """xgrammar's structural tag JSON, or vLLM's older ``{"structures": [...], "triggers":
    [...]}`` form."""
    import xgrammar as xgr

    try:
        tag = json_nesting.loads(text, "the structural tag")
    except json.JSONDecodeError as exc:
        raise ValueError(f"the structural tag is not valid JSON ({exc})") from None
    check_schema_patterns(tag)  # its schemas are lowered as a JSON schema's are
    _check_refs(tag)
    if isinstance(tag, dict) and "structures" in tag:
        items = [
            xgr.StructuralTagItem(
                begin=s["begin"], schema=json.dumps(s.get("schema", {})), end=s["end"]
            )
            for s in tag["structures"]
        ]
        return xgr.Grammar.from_structural_tag(items, list(tag.get("triggers", [])))
    return xgr.Grammar.from_structural_tag(text)


def _regex(text: str) -> Any:
    import xgrammar as xgr

    return xgr.Grammar.from_regex(text)


def _ebnf(text: str) -> Any:
    import xgrammar as xgr

    return xgr.Grammar.from_ebnf(text)


# The grammar of each constraint kind built from its source text (``_source``).
_GRAMMAR_OF = {"regex": _regex, "choice": _ebnf, "grammar": _cfg, "structural_tag": _structural_tag}


# xgrammar's C++ errors begin "[22:04:51] /project/cpp/regex_converter.cc:94: ": a time
# and a source line of its build, which tell a client nothing.
_XGRAMMAR_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _first_line(exc: BaseException) -> str:
    text = _XGRAMMAR_PREFIX.sub("", str(exc).strip())
    if not text:  # e.g. a schema's number past what xgrammar reads
        return "xgrammar could not convert it and gave no reason"
    return text.splitlines()[0] if len(text) > 500 else text
