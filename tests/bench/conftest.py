"""The tiny chat model of the server tests, for a real ``pagedllm serve`` to benchmark."""

from tests.server.conftest import tiny_chat_model  # noqa: F401
