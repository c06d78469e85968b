"""Logprobs in OpenAI's exact shapes (validated by the openai client's own types), logit
bias, best_of and beam search over HTTP."""

from __future__ import annotations

import json
import math

from tests.server.conftest import MODEL

HELLO = [{"role": "user", "content": "Name a colour."}]


def test_chat_logprobs_shape(openai_client):
    reply = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the most likely
    total = sum(e.logprob for e in content)
    assert math.isfinite(total)
    plain = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0
    )
    assert plain.choices[0].logprobs is None
    assert (
        "".join(e.token for e in content) == choice.message.content
        or choice.finish_reason == "stop"
    )


def test_chat_logprobs_streamed(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
        stream=True,
    )  # fmt: skip
    entries = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    plain = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    assert [e.token for e in entries] == [e.token for e in plain.choices[0].logprobs.content]
    assert all(len(e.top_logprobs) == 2 for e in entries)


def test_completion_logprobs_and_echo(openai_client):
    reply = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2
    )
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == reply.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    assert all(2 <= len(top) <= 3 for top in lp.top_logprobs)
    echoed = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=2, temperature=0, logprobs=1, echo=True
    )
    elp = echoed.choices[0].logprobs
    assert elp.token_logprobs[0] is None and elp.top_logprobs[0] is None
    assert all(v is not None for v in elp.token_logprobs[1:])
    assert echoed.choices[0].text.startswith("The sky is")


def test_logit_bias_steers_the_choice(openai_client):
    token = 30  # "."
    reply = openai_client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logit_bias={str(token): 100}
    )
    assert reply.choices[0].text == "..."


def test_best_of_and_beam_search(openai_client, server):
    best = openai_client.completions.create(
        model=MODEL,
        prompt="My favourite food is",
        max_tokens=6,
        n=2,
        best_of=4,
        temperature=1.0,
        seed=7,
    )
    assert sorted(c.index for c in best.choices) == [0, 1]
    beams = openai_client.completions.create(
        model=MODEL, prompt="My favourite food is", max_tokens=6, n=3,
        extra_body={"use_beam_search": True, "length_penalty": 1.0},
    )  # fmt: skip
    assert len(beams.choices) == 3 and len({c.text for c in beams.choices}) == 3
    chat_beams = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=5, n=2, extra_body={"use_beam_search": True}
    )
    assert len(chat_beams.choices) == 2


def test_prompt_logprobs_extra_field(server):
    body = {"model": MODEL, "prompt": "One two three", "max_tokens": 1, "prompt_logprobs": 1}
    with server.client() as http:
        reply = http.post("/v1/completions", json=body).json()
    prompt_lp = reply["choices"][0]["prompt_logprobs"]
    assert prompt_lp[0] is None and all(isinstance(p, dict) for p in prompt_lp[1:])
    json.dumps(reply)
    # n samples: the first computes them, every choice carries them (the others reuse its
    # prefix instead of prefilling the prompt over the whole vocabulary again).
    with server.client() as http:
        many = http.post("/v1/completions", json={**body, "n": 3, "seed": 5}).json()
    assert [c["prompt_logprobs"] for c in many["choices"]] == [prompt_lp] * 3
    echoed = {**body, "n": 2, "echo": True, "logprobs": 1, "prompt_logprobs": None}
    with server.client() as http:
        both = http.post("/v1/completions", json=echoed).json()
    assert all(c["text"].startswith("One two three") for c in both["choices"])
    assert [len(c["logprobs"]["tokens"]) for c in both["choices"]] == [len(prompt_lp) + 1] * 2


def test_a_streamed_echo_carries_the_prompts_logprobs(openai_client):
    """As a whole reply: the echoed prompt's tokens and logprobs first (they were left out
    of the stream), then each generated token's."""
    ask = dict(model=MODEL, prompt="One two three", max_tokens=3, temperature=0.0, echo=True,
               logprobs=1)  # fmt: skip
    whole = openai_client.completions.create(**ask).choices[0].logprobs
    chunks = [c.choices[0] for c in openai_client.completions.create(**ask, stream=True)
              if c.choices]  # fmt: skip
    streamed = [c.logprobs for c in chunks if c.logprobs is not None]

    def joined(field: str) -> list:
        return [item for lp in streamed for item in getattr(lp, field)]

    assert joined("tokens") == whole.tokens
    assert joined("token_logprobs") == whole.token_logprobs
    assert joined("text_offset") == whole.text_offset


def test_logprob_tokens_as_token_ids(openai_client):
    """vLLM's return_tokens_as_token_ids: every logprob token (chosen, alternatives, echoed
    prompt) written token_id:N, the ids those of the output."""
    chat = openai_client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"return_tokens_as_token_ids": True, "return_token_ids": True},
    )  # fmt: skip
    content = chat.choices[0].logprobs.content
    ids = chat.choices[0].model_extra["token_ids"]
    assert [e.token for e in content] == [f"token_id:{i}" for i in ids]
    assert all(t.token.startswith("token_id:") for e in content for t in e.top_logprobs)
    assert all(bytes(e.bytes).decode() == e.token for e in content)
    text = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=2, temperature=0, logprobs=1, echo=True,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    lp = text.choices[0].logprobs
    assert lp.tokens and all(t.startswith("token_id:") for t in lp.tokens)
    assert all(k.startswith("token_id:") for top in lp.top_logprobs[1:] for k in top)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    stream = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=3, temperature=0, logprobs=1, stream=True,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.tokens]  # fmt: skip
    assert streamed and all(t.startswith("token_id:") for t in streamed)


def test_the_servers_token_id_default_and_a_requests_override(limited):
    """--return-tokens-as-token-ids sets the default; a request's false writes the text."""
    body = {"prompt": "The sky is", "max_tokens": 2, "temperature": 0,
            "logprobs": 1}  # fmt: skip
    with limited.client() as client:
        default = client.post("/v1/completions", json=body).json()
    assert all(t.startswith("token_id:") for t in default["choices"][0]["logprobs"]["tokens"])
    body["return_tokens_as_token_ids"] = False
    with limited.client() as client:
        text = client.post("/v1/completions", json=body).json()
    assert "".join(text["choices"][0]["logprobs"]["tokens"]) == text["choices"][0]["text"]


def test_documents_reach_the_chat_template(limited):
    """vLLM's documents field, for templates that render retrieved documents (RAG)."""
    template = "{% for d in documents %}[{{ d['title'] }}: {{ d['text'] }}] {% endfor %}" \
        "{{ messages[0]['content'] }}"  # fmt: skip
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "chat_template": template, "documents": []}  # fmt: skip
    with limited.client() as client:
        bare = client.post("/v1/chat/completions", json=body).json()
        body["documents"] = [{"title": "doc", "text": "a retrieved passage " * 8}]
        given = client.post("/v1/chat/completions", json=body).json()
    assert given["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"] + 8, (bare, given)
