"""vLLM's import path for engine arguments: ``from pagedllm.engine.arg_utils import
AsyncEngineArgs`` works as ``from vllm.engine.arg_utils import AsyncEngineArgs`` does."""

from __future__ import annotations

from dataclasses import dataclass

from pagedllm.config import EngineArgs


@dataclass
class AsyncEngineArgs(EngineArgs):
    """EngineArgs plus the options of the asynchronous engine. Request logging is off
    unless ``enable_log_requests``; ``disable_log_requests`` (older vLLM) keeps it off."""

    enable_log_requests: bool = False
    disable_log_requests: bool = False

    def __post_init__(self) -> None:
        if self.enable_log_requests and self.disable_log_requests:
            raise ValueError("enable_log_requests and disable_log_requests contradict each other.")


__all__ = ["AsyncEngineArgs", "EngineArgs"]
