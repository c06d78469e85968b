"""Sampling parameters of one request, with vLLM's names, defaults and validation.

Validation happens at construction and raises ``ValueError`` with a sentence a user
understands. Fields that exist in vLLM but whose feature is not built yet are accepted
here (so vLLM code constructs the object unchanged) and refused by name when a request
carrying them reaches the engine (``pagedllm.inputs.processor``).
"""

from __future__ import annotations

import copy
import enum
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS).
SAMPLING_EPS = 1e-5
# Temperatures in (0, MIN_TEMPERATURE) are raised to it: smaller ones overflow to inf/nan.
MIN_TEMPERATURE = 1e-2
# logit_bias values are clamped to OpenAI's range.
LOGIT_BIAS_LIMIT = 100.0
# Seeds are 64-bit (torch generators take [0, 2**64)); -1 means "no seed".
SEED_LIMIT = 2**64
# Stop strings are matched against the text after every token, and each bad word is
# tokenized and matched every step: bounded so one request cannot slow every step.
MAX_STOP_STRINGS = 128
MAX_STOP_STRING_CHARS = 2048
MAX_BAD_WORDS = 128
# Their tokens, both spellings of every word together (text that tokenizes byte by byte
# turns 128 words of 2,048 characters into ~1.5 million ids).
MAX_BAD_WORD_TOKENS = 4096
# Id lists, counted before their ids are checked one by one (a 64 MiB body holds ~30
# million): every copy, set and message of the request walks them. Stop ids are a handful
# in practice; allowed ids are at most a vocabulary (checked against the model's later).
MAX_STOP_TOKEN_IDS = 4096
MAX_ALLOWED_TOKEN_IDS = 1 << 19


class RequestOutputKind(enum.IntEnum):
    """How much of a request's output each ``RequestOutput`` carries."""

    CUMULATIVE = 0  # everything generated so far
    DELTA = 1  # only what is new since the previous output
    FINAL_ONLY = 2  # one output, when the request finishes


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


@dataclass
class StructuredOutputsParams:
    """A constraint on the output's form: exactly one of ``json`` (a JSON schema, as a dict,
    a JSON string or a pydantic model class), ``regex``, ``choice``, ``grammar`` (EBNF),
    ``json_object`` (any JSON object) or ``structural_tag``. vLLM's fields and names."""

    json: str | dict[str, Any] | Any | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    # Options of the constraint.
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        if self.json is not None and hasattr(self.json, "model_json_schema"):
            self.json = self.json.model_json_schema()  # a pydantic model class
        if self.json_object is not None:  # "no" was a constraint (any non-empty string)
            self.json_object = _switch("json_object", self.json_object)
        kinds = [name for name in CONSTRAINT_KINDS if self._is_set(name)]
        _check(
            len(kinds) == 1,
            "Structured outputs take exactly one of json, regex, choice, grammar, json_object "
            f"or structural_tag; got {', '.join(kinds) if kinds else 'none'}.",
        )
        if self.json is not None:
            _check(
                isinstance(self.json, (str, dict)),
                f"structured outputs json must be a JSON schema (dict or string), got "
                f"{type(self.json).__name__}.",
            )
        if self.choice is not None:
            _check(
                isinstance(self.choice, list)
                and bool(self.choice)
                and all(isinstance(c, str) for c in self.choice),
                "structured outputs choice must be a non-empty list of strings.",
            )
        for name in ("regex", "grammar", "structural_tag", "whitespace_pattern"):
            value = getattr(self, name)
            _check(
                value is None or isinstance(value, str),
                f"structured outputs {name} must be a string, got {type(value).__name__}.",
            )
        for name in ("disable_fallback", "disable_any_whitespace", "disable_additional_properties"):
            setattr(self, name, _switch(name, getattr(self, name)))

    @property
    def kind(self) -> str:
        """Which constraint this is: one of CONSTRAINT_KINDS."""
        return next(name for name in CONSTRAINT_KINDS if self._is_set(name))

    def _is_set(self, name: str) -> bool:
        value = getattr(self, name)
        return bool(value) if name == "json_object" else value is not None


CONSTRAINT_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


class GuidedDecodingParams(StructuredOutputsParams):
    """vLLM's older name for StructuredOutputsParams (``SamplingParams.guided_decoding``);
    ``backend`` names the grammar library, and only xgrammar is built in."""

    def __init__(self, *args: Any, backend: str | None = None, **kwargs: Any) -> None:
        _check(
            backend in (None, "auto", "xgrammar"),
            f"Guided decoding backend {backend!r} is not supported: pagedllm uses xgrammar.",
        )
        self.backend = backend
        super().__init__(*args, **kwargs)


@dataclass
class SamplingParams:
    """How to sample the completion(s) of one prompt. Same fields and defaults as vLLM."""

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logits_processors: list[Callable[..., Any]] | None = None
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    guided_decoding: GuidedDecodingParams | None = None
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    extra_args: dict[str, Any] | None = None
    bad_words: list[str] | None = None
    # Set by the engine, not by users: every token id that ends the request (eos + stop ids),
    # and the token ids of each bad word (with and without a leading space).
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    bad_words_token_ids: list[list[int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._normalize()
        self._verify()
        if self.temperature < SAMPLING_EPS:
            # Greedy: the truncation knobs have no effect; reset them so batching code can
            # treat the request as plain argmax.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        self.all_stop_token_ids = set(self.stop_token_ids or [])

    # -- construction helpers -------------------------------------------------------------

    def _normalize(self) -> None:
        self.stop = _as_list(self.stop, "stop")
        self.stop_token_ids = _as_list(self.stop_token_ids, "stop_token_ids")
        self.bad_words = _as_list(self.bad_words, "bad_words")
        if self.seed == -1:
            self.seed = None
        if self.top_k is None or self.top_k == -1:
            self.top_k = 0
        if _is_real(self.temperature) and 0 < self.temperature < MIN_TEMPERATURE:
            self.temperature = MIN_TEMPERATURE
        if self.logprobs is True:
            self.logprobs = 1
        if self.prompt_logprobs is True:
            self.prompt_logprobs = 1
        self.output_kind = RequestOutputKind(self.output_kind)
        if self.guided_decoding is not None:
            # vLLM's older spelling: the same constraint under another name.
            _check(
                self.structured_outputs is None,
                "Give structured_outputs or guided_decoding, not both.",
            )
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        if isinstance(self.structured_outputs, dict):
            try:
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            except TypeError as exc:  # an unknown key
                raise ValueError(f"Invalid structured_outputs: {exc}") from None
        _check(
            self.structured_outputs is None
            or isinstance(self.structured_outputs, StructuredOutputsParams),
            "structured_outputs must be StructuredOutputsParams, got "
            f"{type(self.structured_outputs).__name__}.",
        )

    def _verify(self) -> None:
        self._verify_types()
        _check(self.n >= 1, f"n must be at least 1, got {self.n}.")
        if self.best_of is not None:
            _check(
                self.best_of >= self.n,
                f"best_of must be greater than or equal to n, got n={self.n} and "
                f"best_of={self.best_of}.",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(-2.0 <= value <= 2.0, f"{name} must be in [-2, 2], got {value}.")
        _check(
            self.repetition_penalty > 0.0,
            f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.",
        )
        _check(
            self.temperature >= 0.0, f"temperature must be non-negative, got {self.temperature}."
        )
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}.")
        _check(
            isinstance(self.top_k, int) and self.top_k >= 0,
            f"top_k must be 0 or -1 (disable), or at least 1, got {self.top_k}.",
        )
        _check(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None:
            _check(self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}.")
        _check(
            self.min_tokens >= 0,
            f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.",
        )
        if self.max_tokens is not None:
            _check(
                self.min_tokens <= self.max_tokens,
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}.",
            )
        if self.logprobs is not None:
            _check(
                self.logprobs >= -1, f"logprobs must be non-negative or -1, got {self.logprobs}."
            )
        if self.prompt_logprobs is not None:
            _check(
                self.prompt_logprobs >= -1,
                f"prompt_logprobs must be non-negative or -1, got {self.prompt_logprobs}.",
            )
        if self.truncate_prompt_tokens is not None:
            _check(
                self.truncate_prompt_tokens >= 1 or self.truncate_prompt_tokens == -1,
                "truncate_prompt_tokens must be at least 1, or -1 for the model's context "
                f"length, got {self.truncate_prompt_tokens}.",
            )
        _check(all(s != "" for s in self.stop or []), "stop cannot contain an empty string.")
        negative = [t for t in self.stop_token_ids or [] if t < 0]
        _check(
            not negative,
            f"stop_token_ids must be non-negative integers, got {few_ids(negative)}.",
        )
        _check(
            not (self.stop and not self.detokenize),
            "stop strings are only supported when detokenize is True. "
            "Set detokenize=True to use stop.",
        )
        if self.seed is not None:
            _check(
                0 <= self.seed < SEED_LIMIT,
                f"seed must be in [0, 2**64) (or -1 for none), got {self.seed}.",
            )
        self._verify_sizes()

    def _verify_types(self) -> None:
        """Every field holds the type it names (a bool is not a number here), and every
        float is finite: values that reach tensors must never fail inside a step."""
        for name in ("n", "top_k", "min_tokens"):
            _check(_is_int(getattr(self, name)), f"{name} must be an integer, got "
                   f"{getattr(self, name)!r}.")  # fmt: skip
        for name in ("best_of", "seed", "max_tokens", "logprobs", "prompt_logprobs",
                     "truncate_prompt_tokens"):  # fmt: skip
            value = getattr(self, name)
            _check(value is None or _is_int(value), f"{name} must be an integer, got {value!r}.")
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty",
                     "temperature", "top_p", "min_p"):  # fmt: skip
            value = getattr(self, name)
            _check(_is_real(value), f"{name} must be a finite number, got {value!r}.")
        for name in ("ignore_eos", "detokenize", "skip_special_tokens",
                     "spaces_between_special_tokens", "include_stop_str_in_output"):  # fmt: skip
            value = getattr(self, name)
            _check(isinstance(value, bool), f"{name} must be true or false, got {value!r}.")
        _check(
            all(isinstance(s, str) for s in self.stop or []),
            f"stop must be a string or a list of strings, got {self.stop!r}.",
        )
        for name, most in (
            ("stop_token_ids", MAX_STOP_TOKEN_IDS),
            ("allowed_token_ids", MAX_ALLOWED_TOKEN_IDS),
        ):
            ids = getattr(self, name)
            _check(ids is None or isinstance(ids, list), f"{name} must be a list of integers.")
            _check(
                ids is None or len(ids) <= most,
                f"{name} must hold at most {most} ids, got {len(ids or ())}.",
            )
            wrong = list(itertools.islice((t for t in ids or () if not _is_int(t)), 1))
            # The first wrong element only, its text cut: the list or the element may be long.
            _check(not wrong, f"{name} must be a list of integers, got {repr(wrong)[:80]} in it.")
        _check(
            isinstance(self.bad_words, list) and all(isinstance(w, str) for w in self.bad_words),
            f"bad_words must be a list of strings, got {self.bad_words!r}.",
        )
        if self.logit_bias is not None:
            _check(
                isinstance(self.logit_bias, dict)
                and all(_is_token_key(k) and _is_real(v) for k, v in self.logit_bias.items()),
                "logit_bias must map token ids to finite numbers.",
            )

    def _verify_sizes(self) -> None:
        _check_strings("stop", self.stop or [], MAX_STOP_STRINGS, "strings")
        _check_strings("bad_words", self.bad_words or [], MAX_BAD_WORDS, "words")

    # -- derived --------------------------------------------------------------------------

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def stop_strings(self) -> list[str]:
        """``stop`` as a list (it is normalized to one at construction)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def uses_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def clone(self) -> SamplingParams:
        """A deep copy, except logits processors (callables, possibly with state) are shared."""
        processors = self.logits_processors
        self.logits_processors = None
        try:
            twin = copy.deepcopy(self)
        finally:
            self.logits_processors = processors
        # A new list of the same processors, as vLLM's clone: appending to the twin's list
        # must not change the original's.
        twin.logits_processors = None if processors is None else list(processors)
        return twin

    def update_from_generation_config(
        self, generation_config: dict[str, Any], model_eos_token_id: int | None
    ) -> None:
        """Treat the model's extra end-of-sequence ids (generation_config.json) as stop ids."""
        eos_ids = generation_config.get("eos_token_id")
        if self.ignore_eos or eos_ids is None:
            return
        ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
        ids.discard(model_eos_token_id)  # type: ignore[arg-type]
        if ids:
            self.all_stop_token_ids.update(ids)
            self.stop_token_ids = sorted(ids | set(self.stop_token_ids or []))


def few_ids(ids: list[int], shown: int = 3) -> str:
    """The first ``shown`` of ``ids`` for an error message, and how many more: the message
    never echoes a client's whole list (up to 4,096 stop_token_ids came back whole)."""
    head = ", ".join(str(t) for t in ids[:shown])
    return head + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# What pydantic's lax mode reads as a boolean (vLLM validates these fields with it).
_SWITCH_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True,
                 "no": False, "on": True, "off": False, "t": True, "f": False, "y": True,
                 "n": False}  # fmt: skip


def _switch(name: str, value: Any) -> bool:
    """A structured-output switch as a bool: a client's "x" read as true before."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _SWITCH_WORDS:
        return _SWITCH_WORDS[word]
    raise ValueError(f"structured outputs {name} must be true or false, got {value!r}.")


def _check_strings(name: str, values: list[str], max_count: int, what: str) -> None:
    _check(
        len(values) <= max_count,
        f"{name} has {len(values)} {what}; at most {max_count} are allowed.",
    )
    _check(
        all(len(v) <= MAX_STOP_STRING_CHARS for v in values),
        f"{name} must hold {what} of at most {MAX_STOP_STRING_CHARS} characters.",
    )


def _as_list(value: Any, name: str) -> list:
    """A str or a sequence as a list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    _check(isinstance(value, (list, tuple)), f"{name} must be a list, got {value!r}.")
    return list(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_token_key(key: Any) -> bool:
    """A logit_bias key: a token id, or its decimal string (JSON object keys are strings)."""
    if isinstance(key, str):
        digits = key.strip().removeprefix("-")
        return digits.isascii() and digits.isdigit()
    return _is_int(key)


@dataclass
class BeamSearchParams:
    """Beam search, as ``LLM.beam_search`` takes it (vLLM's fields and defaults)."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        _check(self.beam_width >= 1, f"beam_width must be at least 1, got {self.beam_width}.")
        _check(self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}.")
        _check(
            self.temperature >= 0.0, f"temperature must be non-negative, got {self.temperature}."
        )
