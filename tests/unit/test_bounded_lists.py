"""A request model's lists of objects are bounded before their items are validated: a
million scalars where messages belong built a million validation errors (4 s and 1.3 GB
on the event loop)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from pagedllm.entrypoints.openai.limits import MAX_JSON_OBJECTS
from pagedllm.entrypoints.openai.messages_protocol import CountTokensRequest, MessagesRequest
from pagedllm.entrypoints.openai.protocol import ChatCompletionRequest, TokenizeRequest
from pagedllm.entrypoints.openai.responses_protocol import ResponsesRequest

PAST = [1] * (MAX_JSON_OBJECTS + 1)
USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (ChatCompletionRequest, {"messages": PAST}),
        (ChatCompletionRequest, {"messages": [USER], "tools": PAST}),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": PAST}]}),
        (TokenizeRequest, {"messages": PAST}),
        (MessagesRequest, {"max_tokens": 3, "messages": PAST}),
        (MessagesRequest, {"max_tokens": 3, "messages": [{"role": "user", "content": PAST}]}),
        (CountTokensRequest, {"messages": [USER], "tools": PAST}),
        (ResponsesRequest, {"input": PAST}),
        (ResponsesRequest, {"input": "hi", "tools": PAST}),
    ],
    ids=["chat", "chat-tools", "chat-parts", "tokenize", "messages", "messages-blocks",
         "count-tokens-tools", "responses", "responses-tools"],
)  # fmt: skip
def test_a_list_past_the_bound_is_one_error(model: type[BaseModel], body: dict):
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"model": "m", **body})
    too_long = [e for e in caught.value.errors() if e["type"] == "too_long"]
    assert too_long and len(caught.value.errors()) <= 4  # not one per item
