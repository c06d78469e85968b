"""The OpenAI-compatible HTTP server (``pagedllm serve``), an adapter over ``AsyncLLM``."""
