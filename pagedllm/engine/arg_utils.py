"""vLLM's import path for engine arguments: ``from pagedllm.engine.arg_utils import
AsyncEngineArgs`` works as ``from vllm.engine.arg_utils import AsyncEngineArgs`` does."""

from __future__ import annotations

from dataclasses import dataclass

from pagedllm.config import EngineArgs


@dataclass
class AsyncEngineArgs(EngineArgs):
    """EngineArgs plus the options of the asynchronous engine."""

    disable_log_requests: bool = False
    enable_log_requests: bool | None = None

    def __post_init__(self) -> None:
        if self.enable_log_requests is not None:
            self.disable_log_requests = not self.enable_log_requests


__all__ = ["AsyncEngineArgs", "EngineArgs"]
