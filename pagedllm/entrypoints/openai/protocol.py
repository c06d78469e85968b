"""Request and response bodies of the OpenAI-compatible API, with vLLM's extra fields.

Request fields the server does not know are ignored and logged once per name, as vLLM
does (``unknown_fields.py``: clients send fields from newer API versions). Fields it knows
but cannot honour are declared and refuse those values with a 400 naming them, never
silently ignored. Request fields are typed strictly (a
bool is not a number, "5" is not an int, floats are finite), so a value of the wrong type
is a 400 here and never reaches the engine; ranges are checked by ``SamplingParams``, the
same for every endpoint and for offline use. Responses are serialised with
``exclude_unset`` where OpenAI omits absent fields (streamed deltas).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pagedllm.entrypoints.openai.limits import MAX_REQUEST_ID, BoundedList
from pagedllm.entrypoints.openai.unknown_fields import (
    note_inert_field,
    note_unknown_fields,
    unknown_names,
)
from pagedllm.inputs.prompts import MAX_CACHE_SALT
from pagedllm.sampling_params import (
    BeamSearchParams,
    RequestOutputKind,
    SamplingParams,
    StructuredOutputsParams,
)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def request_ids(given: str | None, prefix: str) -> tuple[str, str]:
    """(the id a response carries, the id the engine runs it under). A client's own
    ``request_id`` is echoed, but the engine's id gets a random suffix: one client cannot
    collide with, or probe for, another's requests by naming its id."""
    if given is None:
        generated = random_id(prefix)
        return generated, generated
    return given, f"{given}-{uuid.uuid4().hex[:12]}"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _log_unknown_fields(cls, data: Any) -> Any:
        names = unknown_names(data, cls._known_names())
        if names:
            note_unknown_fields(cls.__name__, names)
        return data

    @classmethod
    def _known_names(cls) -> frozenset[str]:
        known = _KNOWN_NAMES.get(cls)
        if known is None:
            known = _KNOWN_NAMES[cls] = frozenset(
                name
                for field_name, field in cls.model_fields.items()
                for name in (field_name, field.alias)
                if name is not None
            )
        return known


_KNOWN_NAMES: dict[type[OpenAIModel], frozenset[str]] = {}  # per request class, built once


# -- shared pieces -------------------------------------------------------------------------


class StreamOptions(OpenAIModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo


# Every integer a request field can mean fits in 64 bits (seeds, the widest, are below 2**64).
# One of more than 32 digits is refused here, by its number of digits: the range checks
# further on (which name the field's own range) echo the value, and a seed of 10**400 made a
# 400 whose message held all 401 digits.
INT_LIMIT = 10**32


def check_int_size(value: int | None) -> int | None:
    """``value`` unless it is an integer past ``INT_LIMIT`` either way (ValueError, the value
    not echoed)."""
    if isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT:
        raise ValueError(f"out of range: an integer of {len(str(abs(value)))} digits.")
    return value


def check_token_count(value: int | None, info: ValidationInfo) -> int | None:
    """A field that becomes the sampling's ``max_tokens`` (chat's
    ``max_completion_tokens``, Responses' ``max_output_tokens``): refused below 1 under the
    name the client sent, which ``max_tokens``'s own check would not name."""
    if check_int_size(value) is not None and value < 1:
        raise ValueError(f"{info.field_name} must be at least 1, got {value}.")
    return value


class EngineSamplingFields(OpenAIModel):
    """The sampling fields every generating endpoint takes, typed once: chat and
    completions (with OpenAI's fields around them) and vLLM's ``/generate``."""

    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = None
    n: int | None = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    best_of: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    prompt_logprobs: int | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None

    _int_sizes = field_validator(
        "max_tokens", "n", "seed", "best_of", "top_k", "min_tokens", "truncate_prompt_tokens",
        "prompt_logprobs",
    )(check_int_size)  # fmt: skip


class SamplingFields(EngineSamplingFields):
    """Fields chat and completion requests share: OpenAI's, then vLLM's extras."""

    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extras (sent by the openai client through extra_body)
    use_beam_search: bool = False
    length_penalty: float = 1.0
    priority: int = 0
    # Echoed in every streamed chunk and written to the log: bounded, and without control
    # characters (a newline in it forged log lines; 1 MiB of it made 100 MB of stream).
    request_id: str | None = Field(None, max_length=MAX_REQUEST_ID, pattern=r"^[^\x00-\x1f\x7f]*$")
    cache_salt: str | None = Field(None, max_length=MAX_CACHE_SALT)
    # OpenAI's key for requests that share a prefix: the cache salt when none is given, so
    # requests under one key share cached blocks (and no others do)
    prompt_cache_key: str | None = Field(None, max_length=MAX_CACHE_SALT)
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    # vLLM's: the prompt's and each choice's token ids in the response (agent tracing)
    return_token_ids: bool | None = None
    # vLLM's: logprob tokens written token_id:N (default: --return-tokens-as-token-ids)
    return_tokens_as_token_ids: bool | None = None
    # vLLM's, refused when set (``_refuse_unbuilt``): custom logits processors and their
    # arguments, disaggregated prefill's KV transfer, multimodal processing; none built here
    logits_processors: list[Any] | None = None
    vllm_xargs: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        """As vLLM and OpenAI: ``stream_options`` (other than null) only with ``stream``."""
        if value is not None and "stream" in info.data and not info.data["stream"]:
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return value

    def tokens_as_ids(self, server_default: bool) -> bool:
        """Whether logprob tokens are written ``token_id:N``: the request's choice, else the
        server's flag."""
        chosen = self.return_tokens_as_token_ids
        return server_default if chosen is None else chosen

    def salt(self) -> str | None:
        return self.cache_salt if self.cache_salt is not None else self.prompt_cache_key

    def sampling_params(
        self,
        max_tokens: int | None,
        logprobs: int | None,
        stream: bool,
        defaults: dict[str, Any],
        structured_outputs: StructuredOutputsParams | None = None,
    ) -> SamplingParams:
        """The engine's SamplingParams; ``defaults`` come from the model's generation config,
        ``structured_outputs`` from the request's own constraint fields unless given."""
        self._refuse_unbuilt()
        if structured_outputs is None:
            structured_outputs = self.structured_outputs_params()

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(self, name)
            return value if value is not None else defaults.get(name, fallback)

        return SamplingParams(
            n=self.n if self.n is not None else 1,
            best_of=self.best_of,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=pick("repetition_penalty", 1.0),
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            logprobs=logprobs,
            prompt_logprobs=self.prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            logit_bias=dict(self.logit_bias) if self.logit_bias else None,  # keys checked there
            allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words,
            structured_outputs=structured_outputs,
        )

    def structured_outputs_params(self) -> StructuredOutputsParams | None:
        """The output constraint from ``response_format``, ``structured_outputs`` or the
        older ``guided_*`` fields (only one of them may say it)."""
        if self.guided_decoding_backend not in (None, "auto", "xgrammar"):
            raise ValueError(
                f"guided_decoding_backend {self.guided_decoding_backend!r} is not supported: "
                "pagedllm uses xgrammar."
            )
        guided = {
            "json": self.guided_json,
            "regex": self.guided_regex,
            "choice": self.guided_choice,
            "grammar": self.guided_grammar,
        }
        guided = {k: v for k, v in guided.items() if v is not None}
        if guided and self.guided_whitespace_pattern is not None:
            guided["whitespace_pattern"] = self.guided_whitespace_pattern
        sources = {
            "response_format": response_format_constraint(self.response_format),
            "structured_outputs": dict(self.structured_outputs)
            if self.structured_outputs is not None
            else None,
            "guided_*": guided or None,
        }
        given = {k: v for k, v in sources.items() if v is not None}
        if not given:
            return None
        if len(given) > 1:
            raise ValueError(
                f"Give the output constraint once: {' and '.join(given)} were both set."
            )
        try:
            return StructuredOutputsParams(**next(iter(given.values())))
        except TypeError as exc:
            raise ValueError(f"Invalid structured_outputs: {exc}") from None

    def beam_search_params(self, max_tokens: int | None, stream: bool) -> BeamSearchParams:
        self._refuse_unbuilt()
        if stream:
            raise UnsupportedField("use_beam_search with stream")
        if self.structured_outputs_params() is not None:
            raise ValueError("use_beam_search cannot be combined with structured outputs.")
        return BeamSearchParams(
            beam_width=1 if self.n is None else self.n,  # 0 is refused, not read as unset
            max_tokens=16 if max_tokens is None else max_tokens,
            ignore_eos=self.ignore_eos,
            temperature=self.temperature or 0.0,
            length_penalty=self.length_penalty,
        )

    def _refuse_unbuilt(self) -> None:
        for name in (
            "logits_processors",
            "vllm_xargs",
            "kv_transfer_params",
            "mm_processor_kwargs",
        ):
            if getattr(self, name):
                raise UnsupportedField(name)
        if self.length_penalty != 1.0 and not self.use_beam_search:
            # As vLLM: accepted, and without effect outside beam search (logged once).
            note_inert_field(type(self).__name__, "length_penalty", "it applies to beam search")


def response_format_constraint(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` as StructuredOutputsParams fields (None for text)."""
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError('response_format "json_schema" needs a json_schema object.')
        schema = spec.get("schema", spec.get("schema_"))
        if schema is None:
            return {"json_object": True}
        return {"json": schema}
    if kind == "structural_tag":
        return {"structural_tag": json.dumps(response_format)}
    raise ValueError(
        f"response_format type {kind!r} is not supported; use text, json_object, json_schema "
        "or structural_tag."
    )


class UnsupportedField(ValueError):
    """A request field whose feature is not built yet."""

    def __init__(self, field: str) -> None:
        super().__init__(f"The request field '{field}' is not supported by pagedllm yet.")
        self.field = field


class FieldError(ValueError):
    """A value refused with the path of the field that holds it (``tools.2.function.name``),
    which the 400 gives as its ``param``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- chat ------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    # name, tool_call_id, ... pass to the template
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    role: str
    content: str | BoundedList[dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: BoundedList[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: BoundedList[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    service_tier: str | None = None
    # vLLM extras
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: retrieved documents for templates that render them (RAG), as ``documents``
    documents: BoundedList[dict[str, str]] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = (
        None
    )
    include_reasoning: bool = True  # False: the reasoning is parsed off and not returned

    _token_count = field_validator("max_completion_tokens")(check_token_count)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        _check_metadata(self.metadata)
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true.")
        if self.top_logprobs is not None and self.top_logprobs < 0:
            raise ValueError("top_logprobs must be non-negative.")
        return self

    def refuse_unbuilt_chat_fields(self) -> None:
        checks = {
            "store": bool(self.store),
            "modalities": self.modalities not in (None, ["text"]),
            "service_tier": self.service_tier not in (None, "auto", "default"),
        }
        for name, is_set in checks.items():
            if is_set:
                raise UnsupportedField(name)

    def requested_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    def template_kwargs(self) -> dict[str, Any] | None:
        """``chat_template_kwargs``, with ``reasoning_effort`` passed to the template as vLLM
        does (and ``enable_thinking`` on unless the effort is "none", for templates that
        ask for thinking to be switched on) and ``documents`` as ``documents``; the request's
        own kwargs win."""
        defaults: dict[str, Any] = {}
        if self.reasoning_effort is not None:
            defaults["reasoning_effort"] = self.reasoning_effort
            defaults["enable_thinking"] = self.reasoning_effort != "none"
        if self.documents is not None:
            defaults["documents"] = self.documents
        if not defaults:
            return self.chat_template_kwargs
        return {**defaults, **(self.chat_template_kwargs or {})}


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's bounds: up to 16 pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return
    if len(metadata) > 16:
        raise ValueError(f"metadata has {len(metadata)} keys; at most 16 are allowed.")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise ValueError("metadata keys must be at most 64 characters and values at most 512.")


class ChatCompletionMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    reasoning: str | None = None  # vLLM 0.26's name
    reasoning_content: str | None = None  # the older name, the same text
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # with return_token_ids


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids
    metadata: dict[str, str] | None = None  # the request's, echoed


class DeltaMessage(BaseModel):
    """Only the fields set are sent: clients test ``hasattr(delta, "reasoning")``."""

    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


# -- completions -----------------------------------------------------------------------


PromptField = str | list[str] | list[int] | list[list[int]]
# A prompt list validated as the kind its first item says: pydantic's union tried each kind
# and built one error per item for the kinds that fail, 14 s and 9 GB for 20 million token
# ids (a 40 MB body), on the event loop.
_PROMPT_LISTS = {
    str: TypeAdapter(list[str]),
    int: TypeAdapter(list[int]),
    list: TypeAdapter(list[list[int]]),
}


class CompletionRequest(SamplingFields):
    prompt: PromptField
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    add_special_tokens: bool = True

    @field_validator("prompt", mode="plain", json_schema_input_type=PromptField)
    @classmethod
    def _prompt_kind(cls, value: Any) -> PromptField:
        if isinstance(value, str) or (isinstance(value, list) and not value):
            return value  # an empty list is refused by prompts(), with a sentence
        adapter = _PROMPT_LISTS.get(type(value[0])) if isinstance(value, list) else None
        if adapter is None:
            raise ValueError(
                "prompt must be a string, a list of strings, a list of token ids or a list of "
                "lists of token ids."
            )
        try:
            return adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = "".join(f"[{i}]" for i in error["loc"])
            raise ValueError(f"prompt{where}: {error['msg']}.") from None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError("logprobs must be non-negative.")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (text or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ValueError("prompt must not be empty.")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids
    token_ids: list[int] | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionStreamResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# -- models, tokenization ----------------------------------------------------------------


class ModelPermission(BaseModel):
    id: str = Field(default_factory=lambda: random_id("modelperm"))
    object: str = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagedllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class TokenizeRequest(OpenAIModel):
    model: str | None = None
    prompt: str | None = None
    messages: BoundedList[ChatMessage] | None = None
    tools: BoundedList[dict[str, Any]] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Give exactly one of 'prompt' or 'messages'.")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class GenerateRequest(EngineSamplingFields):
    """vLLM's ``POST /generate``: a prompt and ``SamplingParams`` fields by their names."""

    prompt: str
    stream: bool = False
    logprobs: int | None = None
    detokenize: bool = True
    structured_outputs: dict[str, Any] | None = None

    def sampling_kwargs(self) -> dict[str, Any]:
        """The SamplingParams fields the request set (the others keep their defaults)."""
        values = self.model_dump(exclude_unset=True, exclude={"prompt", "stream"})
        return {k: v for k, v in values.items() if v is not None}
