"""Request logging, off unless asked for (``--enable-log-requests``), as in vLLM 0.26:
prompts are user data, so a default server writes none of them to its log.

With it on, each request's prompt, prompt token ids and sampling parameters are logged
when it arrives and a line when it ends; with ``--enable-log-outputs`` too, the text and
token ids each completion generated. ``--max-log-len`` cuts every prompt, output and
token-id list to that many characters or ids (no limit by default, as vLLM). Prompts and
outputs are shown with ``repr``, so no client text can forge a log line.
"""

from __future__ import annotations

from pagedllm.engine.llm_engine import PreparedRequest
from pagedllm.logger import init_logger
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import RequestOutputKind

logger = init_logger(__name__)


class RequestLogger:
    def __init__(self, log_outputs: bool = False, max_log_len: int | None = None) -> None:
        if max_log_len is not None and max_log_len < 0:
            raise ValueError(f"max_log_len must be at least 0, got {max_log_len}.")
        self.log_outputs = log_outputs
        self.max_log_len = max_log_len

    def _cut(self, items: str | list[int]) -> str | list[int]:
        return items if self.max_log_len is None else items[: self.max_log_len]

    def received(self, prepared: PreparedRequest) -> None:
        prompt = prepared.prompt
        logger.info(
            "Received request %s: prompt: %r, params: %s, prompt_token_ids: %s.",
            prepared.request_id,
            None if prompt.prompt is None else self._cut(prompt.prompt),
            prepared.params,
            self._cut(list(prompt.prompt_token_ids)),
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
