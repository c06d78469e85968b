"""Request logging, off unless asked for (``--enable-log-requests``), as in vLLM 0.26:
prompts are user data, so a default server writes none of them to its log.

With it on, each request's prompt, prompt token ids and sampling parameters are logged
when it arrives and a line when it ends; with ``--enable-log-outputs`` too, the text and
token ids each completion generated. ``--max-log-len`` cuts every prompt, output and
token-id list to that many characters or ids (no limit by default, as vLLM). Prompts and
outputs are shown with ``repr``, so no client text can forge a log line.

The sampling parameters are the client's too: each field's value is cut to ``max_log_len``
characters, or ``MAX_PARAM_CHARS`` without it. Written whole, a request's allowed_token_ids,
logit_bias, stop strings, bad words and grammar made a line of megabytes, once per prompt of
a batched completion: a 1.9 MB body of 64 prompts wrote 122 MB of log, --max-log-len 60 or
not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pagedllm.engine.llm_engine import PreparedRequest
from pagedllm.logger import init_logger
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind

logger = init_logger(__name__)

# The characters of one sampling parameter's value a line shows when --max-log-len is unset.
MAX_PARAM_CHARS = 1024


class RequestLogger:
    def __init__(self, log_outputs: bool = False, max_log_len: int | None = None) -> None:
        if max_log_len is not None and max_log_len < 0:
            raise ValueError(f"max_log_len must be at least 0, got {max_log_len}.")
        self.log_outputs = log_outputs
        self.max_log_len = max_log_len

    @property
    def param_chars(self) -> int:
        """The characters of each sampling parameter's value a line shows."""
        return MAX_PARAM_CHARS if self.max_log_len is None else self.max_log_len

    def _cut(self, items: str | list[int]) -> str | list[int]:
        return items if self.max_log_len is None else items[: self.max_log_len]

    def received(self, prepared: PreparedRequest) -> None:
        prompt = prepared.prompt
        logger.info(
            "Received request %s: prompt: %r, params: %s, prompt_token_ids: %s.",
            prepared.request_id,
            None if prompt.prompt is None else self._cut(prompt.prompt),
            params_text(prepared.params, self.param_chars),
            self._cut(list(prompt.prompt_token_ids)),
        )

    def received_beam_search(
        self, request_id: str, prompt_token_ids: list[int], params: BeamSearchParams
    ) -> None:
        """A beam search, logged once: its steps, one-token requests, are not logged."""
        logger.info(
            "Received beam search request %s: params: %s, prompt_token_ids: %s.",
            request_id,
            params_text(params, self.param_chars),
            self._cut(list(prompt_token_ids)),
        )

    def outputs(self, prepared: PreparedRequest) -> OutputLog | None:
        """What collects the request's generated text, when outputs are logged."""
        return OutputLog(self, prepared) if self.log_outputs else None

    def ended(self, request_id: str, finished: bool, output_log: OutputLog | None) -> None:
        if output_log is not None:
            output_log.write()
        logger.info("%s request %s.", "Finished" if finished else "Aborted", request_id)


class OutputLog:
    """The text and token ids of each completion of one request, as they stream in (deltas
    added up, cumulative outputs replaced), kept only up to ``max_log_len``."""

    def __init__(self, owner: RequestLogger, prepared: PreparedRequest) -> None:
        self.owner = owner
        self.request_id = prepared.request_id
        self.deltas = prepared.params.output_kind == RequestOutputKind.DELTA
        self.texts: dict[int, str] = {}
        self.token_ids: dict[int, list[int]] = {}
        self.finish_reasons: dict[int, str | None] = {}

    def add(self, output: RequestOutput) -> None:
        for completion in output.outputs:
            i = completion.index
            text, ids = completion.text, list(completion.token_ids)
            if self.deltas:
                text, ids = self.texts.get(i, "") + text, self.token_ids.get(i, []) + ids
            self.texts[i] = self.owner._cut(text)
            self.token_ids[i] = self.owner._cut(ids)
            self.finish_reasons[i] = completion.finish_reason

    def write(self) -> None:
        for i in sorted(self.texts):
            logger.info(
                "Generated response %s (completion %d): output: %r, output_token_ids: %s, "
                "finish_reason: %s.", self.request_id, i, self.texts[i], self.token_ids[i],
                self.finish_reasons[i],
            )  # fmt: skip


def params_text(params: Any, limit: int) -> str:
    """A dataclass (``SamplingParams``) written as its repr is, each field's value cut to
    ``limit`` characters, marked as cut (with its length where it has one)."""
    shown = (
        f"{f.name}={_cut_repr(getattr(params, f.name), limit)}"
        for f in dataclasses.fields(params)
        if f.repr
    )
    return f"{type(params).__name__}({', '.join(shown)})"


def _cut_repr(value: Any, limit: int) -> str:
    # A list or string is sliced before its repr is built (each item takes a character at
    # least): half a million token ids are not written out only to be dropped.
    sliced = isinstance(value, (list, str)) and len(value) > limit
    text = repr(value[: limit + 1] if sliced else value)
    if not sliced and len(text) <= limit:
        return text
    if isinstance(value, (list, dict)):
        return f"{text[:limit]}...(cut: {len(value)} items)"
    if isinstance(value, str):
        return f"{text[:limit]}...(cut: {len(value)} characters)"
    return f"{text[:limit]}...(cut)"
