"""``from pagedllm.v1.engine.async_llm import AsyncLLM``, as vLLM code imports it."""

from pagedllm.engine.async_llm import AsyncLLM

__all__ = ["AsyncLLM"]
