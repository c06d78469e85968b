"""On the server: a request that makes an engine step fail gets an error of its own (a 500
for an HTTP request, RequestFailedError for an AsyncLLM caller); eight bystanders served at
the same time get exactly their normal outputs, never its error text, and every KV block is
free afterwards. The app runs in this process so the failure can be forced."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pagedllm.config import EngineArgs
from pagedllm.engine.async_llm import AsyncLLM, RequestFailedError
from pagedllm.entrypoints.openai.api_server import build_app, make_parser
from pagedllm.metrics.prometheus import PrometheusStatLogger
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.worker.model_runner import ModelRunner
from tests.conftest import engine_in_process

POISON = "zzzz"  # the prompt of the request whose sampling fails


@pytest.fixture(scope="module")
def served(tiny_chat_model):
    config = EngineArgs(
        model=str(tiny_chat_model), kv_cache_memory_bytes="16M"
    ).create_engine_config()
    stats = PrometheusStatLogger(  # fed by the engine, as in the server
        "tiny", config.model_config.max_model_len, config.cache_config
    )
    with engine_in_process():  # the runner is patched and a closure is a logits processor
        engine = AsyncLLM(config, log_stats=False, stat_loggers=[stats])
    args = make_parser().parse_args([])
    app = build_app(engine, args, stats)
    yield engine, app
    engine.shutdown()


def bystander_bodies() -> list[dict]:
    return [
        {"prompt": f"bystander {i}", "max_tokens": 24, "temperature": 0.0, "ignore_eos": True}
        for i in range(8)
    ]


async def post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
        return list(await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies)))


def texts(replies: list[httpx.Response]) -> list[str]:
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    return [r.json()["choices"][0]["text"] for r in replies]


def assert_blocks_free(engine: AsyncLLM) -> None:
    state = asyncio.run(engine.call(lambda e: e.kv_cache_state()))  # checks integrity too
    assert state["num_free_blocks"] == state["num_blocks"]


def test_a_failing_http_request_gets_its_own_500(served, monkeypatch):
    engine, app = served
    expected = texts(asyncio.run(post_all(app, bystander_bodies())))
    sample = ModelRunner._sample
    poison = engine.tokenizer.encode(POISON, add_special_tokens=False)

    def failing_sample(self, hidden, states, batch, metadata, mask):
        for state in states:
            if (
                state.prompt_token_ids[-len(poison) :] == poison
                and len(state.output_token_ids) >= 3
            ):
                raise RuntimeError("a secret detail of the failure")
        return sample(self, hidden, states, batch, metadata, mask)

    monkeypatch.setattr(ModelRunner, "_sample", failing_sample)
    poisoned = {"prompt": POISON, "max_tokens": 24, "temperature": 0.0, "ignore_eos": True}
    replies = asyncio.run(post_all(app, [*bystander_bodies(), poisoned]))
    failed = replies[-1]
    assert failed.status_code == 500
    assert "could not complete this request" in failed.json()["error"]["message"]
    assert texts(replies[:-1]) == expected
    assert all("secret detail" not in r.text for r in replies[:-1])
    assert_blocks_free(engine)
    # The failure is counted (it once raised KeyError in the metrics, stopping the engine).
    metrics = asyncio.run(_get(app, "/metrics")).text
    assert (
        'pagedllm:request_success_total{engine="0",finished_reason="error",model_name="tiny"} 1.0'
        in metrics
    )
    assert texts(asyncio.run(post_all(app, bystander_bodies()[:1]))) == expected[:1]


async def _get(app, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get(path)


def test_a_raising_logits_processor_fails_only_its_request(served):
    engine, app = served
    expected = texts(asyncio.run(post_all(app, bystander_bodies())))

    def processor(output_ids: list[int], logits):
        if len(output_ids) >= 2:
            raise RuntimeError("the processor exploded")
        return logits

    async def failing() -> BaseException | None:
        params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                                logits_processors=[processor],
                                output_kind=RequestOutputKind.FINAL_ONLY)  # fmt: skip
        try:
            async for _ in engine.generate({"prompt_token_ids": [5, 6, 7]}, params, "bad"):
                pass
        except RequestFailedError as exc:
            return exc
        return None

    async def both():
        return await asyncio.gather(post_all(app, bystander_bodies()), failing())

    replies, error = asyncio.run(both())
    assert isinstance(error, RequestFailedError) and "exploded" in str(error)
    assert texts(replies) == expected
    assert_blocks_free(engine)
