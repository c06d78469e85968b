"""Chat templates: request templates are text, never paths; the server's renders are bounded
in time, memory and output size, and a bad template fails its own request only."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import ClassVar

import pytest

from pagedllm.inputs.chat import ChatRender, prepare_chat, render_chat
from pagedllm.inputs.template_sandbox import RenderLimits, TemplateSandbox

HELLO = [{"role": "user", "content": "hi"}]


class Tokenizer:
    """What prepare_chat asks of a tokenizer."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    special_tokens_map: ClassVar[dict[str, str]] = {"bos_token": "<s>", "eos_token": "</s>"}

    def get_chat_template(self, chat_template, tools):
        return chat_template or self.chat_template


def job(template: str) -> ChatRender:
    return prepare_chat(Tokenizer(), HELLO, chat_template=template)


@pytest.fixture(scope="module")
def sandbox():
    box = TemplateSandbox(2, RenderLimits(timeout_s=2.0, memory_bytes=256 << 20, max_chars=4096))
    yield box
    box.close()


def render(sandbox: TemplateSandbox, template: str) -> str:
    return asyncio.run(sandbox.render(job(template)))


def test_a_path_is_rendered_as_text_never_read():
    assert render_chat(job("/etc/passwd")) == "/etc/passwd"


def test_the_model_template_and_special_tokens_render(sandbox):
    assert render(sandbox, None) == "<user>hi"
    assert render(sandbox, "{{ bos_token }}{{ messages[0].content }}") == "<s>hi"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
         "longer than 2 s"),
        ("{{ 'a' * 1000000000 }}", "more memory"),
        ("{% for i in range(5000) %}xx{% endfor %}", "longer than 4096 characters"),
        ("{{ raise_exception('no system role') }}", "no system role"),
        ("{{ messages[0].missing.deeper }}", "could not render"),
    ],
)  # fmt: skip
def test_bounded_failures_are_value_errors_and_the_sandbox_recovers(sandbox, template, fragment):
    start = time.monotonic()
    with pytest.raises(ValueError, match=fragment):
        render(sandbox, template)
    assert time.monotonic() - start < 10
    assert render(sandbox, None) == "<user>hi"  # the workers serve on


def test_a_worker_that_dies_mid_render_is_reported_as_stopped_and_replaced():
    """Not as a timeout: the answer comes at once, and the next render gets a new worker.
    One worker, so the one killed is the one rendering."""
    sandbox = TemplateSandbox(1, RenderLimits(timeout_s=2.0, memory_bytes=256 << 20))
    try:
        assert render(sandbox, None) == "<user>hi"  # started and warm
        busy = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
        killer = threading.Timer(0.5, sandbox._workers[0].process.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(ValueError, match="stopped while rendering"):
            render(sandbox, busy)
        assert time.monotonic() - start < 1.9  # before the worker's own 2 s alarm
        killer.join()
        assert render(sandbox, None) == "<user>hi"
    finally:
        sandbox.close()


@pytest.mark.parametrize("key", ["messages", "conversations", "return_assistant_tokens_mask"])
def test_kwargs_cannot_set_what_the_renderer_fills(key):
    with pytest.raises(ValueError, match=key):
        prepare_chat(Tokenizer(), HELLO, chat_template_kwargs={key: 1})


def test_kwargs_override_their_arguments_as_in_vllm():
    prepared = prepare_chat(
        Tokenizer(),
        HELLO,
        add_generation_prompt=True,
        chat_template_kwargs={"add_generation_prompt": False, "tools": [], "enable_thinking": 1},
    )
    assert prepared.add_generation_prompt is False
    assert prepared.tools == []
    assert prepared.variables["enable_thinking"] == 1
    with pytest.raises(ValueError, match="add_generation_prompt"):
        prepare_chat(Tokenizer(), HELLO, chat_template_kwargs={"add_generation_prompt": "no"})
