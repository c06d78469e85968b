"""The seventh probe's reproducer: what a chat request gives its template besides the
messages (``documents``, ``chat_template_kwargs``) was not counted before rendering, so 10 MB
of it went to the template sandbox and back, where as much in the messages is refused."""

from __future__ import annotations

import pytest

from tests.server.conftest import MODEL
from tests.server.test_errors import assert_error, post

HELLO = [{"role": "user", "content": "Hi"}]
BIG = "x" * 10_000_000


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"documents": [{"title": "t", "text": BIG}]}),
        ("/v1/chat/completions", {"chat_template_kwargs": {"notes": BIG}}),
        ("/tokenize", {"chat_template_kwargs": {"documents": [{"text": BIG}]}}),
    ],
    ids=["documents", "kwargs", "tokenize-kwargs"],
)
def test_template_inputs_past_the_context_are_refused_before_rendering(server, path, fields):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, **fields}
    assert_error(post(server, path, json=body), 400, "chat_template_kwargs (documents included)")


def test_small_template_inputs_are_served(server):
    documents = [{"title": "t", "text": "short"}]
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2, "documents": documents}
    body["chat_template_kwargs"] = {"a": "b"}
    assert post(server, "/v1/chat/completions", json=body).status_code == 200
