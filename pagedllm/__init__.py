"""pagedllm: serve large language models fast to many users at once.

    from pagedllm import LLM, SamplingParams
    llm = LLM()  # the bundled SmolLM2-135M-Instruct
    print(llm.generate("Hello, my name is", SamplingParams(max_tokens=32))[0].outputs[0].text)

Heavy modules (torch, transformers) load on first use of LLM, not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pagedllm.inputs.prompts import PromptType, TextPrompt, TokensPrompt
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from pagedllm.version import __version__

if TYPE_CHECKING:
    from pagedllm.config import EngineArgs
    from pagedllm.engine.arg_utils import AsyncEngineArgs
    from pagedllm.engine.async_llm import AsyncLLM
    from pagedllm.entrypoints.llm import LLM

__all__ = [
    "LLM",
    "AsyncEngineArgs",
    "AsyncLLM",
    "BeamSearchParams",
    "CompletionOutput",
    "EngineArgs",
    "Logprob",
    "PromptType",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "TextPrompt",
    "TokensPrompt",
    "__version__",
]

_LAZY = {
    "LLM": "pagedllm.entrypoints.llm",
    "AsyncLLM": "pagedllm.engine.async_llm",
    "AsyncEngineArgs": "pagedllm.engine.arg_utils",
    "EngineArgs": "pagedllm.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
