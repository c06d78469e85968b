"""``pagedllm bench serve``: its pure parts (arrivals, datasets, metrics, stream parsing) on
hand-made inputs, then whole runs against a real ``pagedllm serve`` on the tiny model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from pagedllm.bench import client as client_module
from pagedllm.bench.client import Endpoint, RequestResult, send
from pagedllm.bench.datasets import (
    SampleRequest,
    load_tokenizer,
    random_requests,
    sharegpt_requests,
)
from pagedllm.bench.metrics import calculate_metrics, result_fields, summary_text
from pagedllm.bench.serve import arrival_times
from pagedllm.entrypoints.cli.main import build_parser, main
from tests.conftest import save_char_tokenizer
from tests.server.conftest import API_KEY, Server, free_port

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_LINES = [
    "============ Serving Benchmark Result ============",
    "Successful requests:",
    "Failed requests:",
    "Benchmark duration (s):",
    "Total input tokens:",
    "Total generated tokens:",
    "Request throughput (req/s):",
    "Output token throughput (tok/s):",
    "Total Token throughput (tok/s):",
    "---------------Time to First Token----------------",
    "Mean TTFT (ms):",
    "Median TTFT (ms):",
    "P99 TTFT (ms):",
    "-----Time per Output Token (excl. 1st token)------",
    "Mean TPOT (ms):",
    "Median TPOT (ms):",
    "P99 TPOT (ms):",
    "---------------Inter-token Latency----------------",
    "Mean ITL (ms):",
    "Median ITL (ms):",
    "P99 ITL (ms):",
    "=" * 50,
]
E2EL_LINES = [
    "----------------End-to-end Latency----------------",
    "Mean E2EL (ms):",
    "Median E2EL (ms):",
    "P99 E2EL (ms):",
]
JSON_KEYS = [
    "date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
    "max_concurrency", "duration", "completed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "output_throughput", "total_token_throughput",
    *(f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
      for stat in ("mean", "median", "std", "p99")),
    "input_lens", "output_lens", "ttfts", "itls", "errors",
]  # fmt: skip


@pytest.fixture(scope="module")
def char_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_char_tokenizer(tmp_path_factory.mktemp("char-tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(char_tokenizer_dir: Path):
    return load_tokenizer(str(char_tokenizer_dir))


# ---- arrivals ----------------------------------------------------------------------------


def _gap_stats(rate: float, burstiness: float, seed: int = 0) -> tuple[float, float]:
    gaps = np.diff(arrival_times(20001, rate, burstiness, seed))
    return float(gaps.mean()), float(gaps.std() / gaps.mean())


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_times(5, math.inf, 1.0, 0).tolist() == [0.0] * 5


def test_poisson_arrivals_have_exponential_gaps_of_mean_one_over_rate() -> None:
    times = arrival_times(20001, 4.0, 1.0, seed=0)
    assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
    mean, cv = _gap_stats(4.0, 1.0)
    assert mean == pytest.approx(0.25, rel=0.03)
    assert cv == pytest.approx(1.0, rel=0.05)  # the exponential's std equals its mean


def test_burstiness_is_the_gamma_shape() -> None:
    # Gamma gaps of shape k keep the mean 1/rate; their coefficient of variation is 1/sqrt(k).
    for burstiness, expected_cv in ((4.0, 0.5), (0.25, 2.0)):
        mean, cv = _gap_stats(2.0, burstiness)
        assert mean == pytest.approx(0.5, rel=0.05)
        assert cv == pytest.approx(expected_cv, rel=0.08)


def test_arrivals_are_fixed_by_the_seed() -> None:
    first, again = arrival_times(50, 3.0, 1.0, 7), arrival_times(50, 3.0, 1.0, 7)
    assert first.tolist() == again.tolist()
    assert first.tolist() != arrival_times(50, 3.0, 1.0, 8).tolist()


# ---- datasets ----------------------------------------------------------------------------


def test_random_prompts_have_the_asked_lengths(tokenizer) -> None:
    exact = random_requests(tokenizer, 20, input_len=16, output_len=8, seed=0)
    assert [(s.prompt_len, s.output_len) for s in exact] == [(16, 8)] * 20
    for s in exact:  # prompt_len is the tokenizer's count, and no special token is drawn
        ids = tokenizer.encode(s.prompt, add_special_tokens=False)
        assert len(ids) == s.prompt_len and not set(ids) & set(tokenizer.all_special_ids)
    ranged = random_requests(tokenizer, 400, 16, 8, range_ratio=0.5, seed=0)
    inputs, outputs = [s.prompt_len for s in ranged], [s.output_len for s in ranged]
    assert min(inputs) == 8 and max(inputs) == 24 and 14 < np.mean(inputs) < 18
    assert min(outputs) == 4 and max(outputs) == 12


def test_random_prompts_are_fixed_by_the_seed_and_fresh_for_another(tokenizer) -> None:
    def prompts(seed: int) -> list[str]:
        return [s.prompt for s in random_requests(tokenizer, 8, 32, 4, seed=seed)]

    assert prompts(0) == prompts(0)
    assert not set(prompts(0)) & set(prompts(1))
    assert len(set(prompts(0))) == 8


def test_random_prefix_is_shared(tokenizer) -> None:
    samples = random_requests(tokenizer, 6, 10, 4, prefix_len=5, seed=3)
    assert len({s.prompt[:5] for s in samples}) == 1
    assert len({s.prompt[5:] for s in samples}) == 6
    assert all(s.prompt_len == 15 for s in samples)


def test_random_lengths_are_checked(tokenizer) -> None:
    with pytest.raises(ValueError, match="--random-range-ratio"):
        random_requests(tokenizer, 2, 16, 8, range_ratio=1.0)
    with pytest.raises(ValueError, match="--random-input-len"):
        random_requests(tokenizer, 2, 0, 8)


def _conversation(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


@pytest.fixture
def sharegpt_file(tmp_path: Path) -> Path:
    items = [
        _conversation(("human", "a" * 10), ("gpt", "b" * 6)),  # usable: 10 in, 6 out
        _conversation(("human", "hi"), ("gpt", "c" * 20)),  # prompt too short
        _conversation(("human", "d" * 12), ("gpt", "ok")),  # answer too short
        _conversation(("human", "e" * 1100), ("gpt", "f" * 10)),  # prompt too long
        _conversation(("human", "g" * 1000), ("gpt", "h" * 1100)),  # too long in all
        _conversation(("gpt", "hello"), ("human", "i" * 7), ("gpt", "j" * 9)),  # 7 in, 9 out
        _conversation(("human", "lonely turn")),  # no answer
        "not a conversation",
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(items))
    return path


def test_sharegpt_takes_the_first_human_turn_and_skips_what_vllm_skips(
    sharegpt_file: Path, tokenizer
) -> None:
    samples = sharegpt_requests(str(sharegpt_file), tokenizer, 2, seed=0)
    assert sorted((s.prompt, s.prompt_len, s.output_len) for s in samples) == [
        ("a" * 10, 10, 6),
        ("i" * 7, 7, 9),
    ]


def test_sharegpt_output_len_overrides_the_answer_and_short_files_repeat(
    sharegpt_file: Path, tokenizer
) -> None:
    samples = sharegpt_requests(str(sharegpt_file), tokenizer, 10, output_len=5, seed=1)
    assert len(samples) == 10
    assert all(s.output_len == 5 for s in samples)
    # With the answer's length no longer asked for, the short answer's prompt is usable, and
    # the long prompt fits in the total with 5 tokens of output.
    assert {s.prompt for s in samples} == {"a" * 10, "d" * 12, "g" * 1000, "i" * 7}


def test_sharegpt_without_usable_items_is_an_error(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps([_conversation(("human", "hi"), ("gpt", "yo"))]))
    with pytest.raises(ValueError, match="--dataset-path"):
        sharegpt_requests(str(path), tokenizer, 3)
    path.write_text(json.dumps({"conversations": []}))
    with pytest.raises(ValueError, match="JSON list"):
        sharegpt_requests(str(path), tokenizer, 3)


# ---- metrics -----------------------------------------------------------------------------


def _records() -> list[RequestResult]:
    return [
        RequestResult(prompt_len=10, start=0.0, success=True, output_tokens=5, ttft=0.1,
                      itl=[0.05] * 4, latency=0.3),
        RequestResult(prompt_len=20, start=0.1, success=True, output_tokens=3, ttft=0.2,
                      itl=[0.1, 0.1], latency=0.4),
        RequestResult(prompt_len=30, start=0.05, latency=0.1, error="HTTP 400: too long"),
        RequestResult(prompt_len=5, start=1.0, success=True, output_tokens=1, ttft=0.08,
                      latency=0.08),
    ]  # fmt: skip


def test_metrics_of_hand_made_records() -> None:
    m = calculate_metrics(_records(), duration=2.0, percentiles=[50, 99])
    assert (m.completed, m.failed) == (3, 1)
    assert (m.total_input, m.total_output) == (35, 9)  # the failed request counts for nothing
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_token_throughput == pytest.approx(22.0)
    # TPOT per request: (e2e - ttft) / (tokens - 1): 50 ms and 100 ms; one token has none.
    assert m.latencies["tpot"].mean == pytest.approx(75.0)
    assert m.latencies["tpot"].percentiles[99] == pytest.approx(np.percentile([50, 100], 99))
    assert m.latencies["ttft"].mean == pytest.approx(np.mean([100, 200, 80]))
    assert m.latencies["ttft"].median == pytest.approx(100.0)
    # ITL pools every gap of every successful request.
    assert m.latencies["itl"].mean == pytest.approx(np.mean([50] * 4 + [100] * 2))
    assert m.latencies["e2el"].percentiles[50] == pytest.approx(300.0)
    assert m.max_concurrent_requests == 3  # at 0.1 s: the first, the failed one, the second


def test_summary_and_result_fields_of_hand_made_records() -> None:
    records = _records()
    m = calculate_metrics(records, duration=2.0, percentiles=[90, 99])
    text = summary_text(m, ["ttft", "tpot", "itl"], [90], request_rate=4.0, max_concurrency=2)
    lines = text.splitlines()
    assert lines[0] == SUMMARY_LINES[0] and lines[-1] == "=" * 50
    assert f"{'Successful requests:':<40} {3:<10}" in lines
    assert f"{'Failed requests:':<40} {1:<10}" in lines
    assert f"{'Mean TPOT (ms):':<40} {'75.00':<10}" in lines
    assert f"{'Request rate configured (RPS):':<40} {'4.00':<10}" in lines
    assert any(line.startswith("P90 ITL (ms):") for line in lines)
    assert not any("P99" in line or "E2EL" in line for line in lines)  # not asked to show
    fields = result_fields(m, records)
    assert fields["p99_tpot_ms"] == pytest.approx(np.percentile([50, 100], 99))
    assert fields["mean_e2el_ms"] == pytest.approx(np.mean([300, 400, 80]))
    assert fields["output_lens"] == [5, 3, 0, 1]
    assert fields["errors"] == ["", "", "HTTP 400: too long", ""]


# ---- one streamed request ----------------------------------------------------------------


def _sse(*chunks: dict | str) -> bytes:
    lines = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return "".join(lines).encode()


def _text(text: str) -> dict:
    return {"choices": [{"index": 0, "text": text}], "usage": None}


async def _send_to(handler, endpoint: Endpoint) -> RequestResult:
    sample = SampleRequest("hello", 5, 4)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await send(client, endpoint, sample)


COMPLETIONS = Endpoint(url="http://server/v1/completions", model="m", chat=False,
                       headers={"Authorization": "Bearer k"}, sampling={"temperature": 0.0},
                       ignore_eos=True)  # fmt: skip


def test_a_stream_gives_usage_tokens_and_gaps_between_pieces_of_text() -> None:
    import asyncio

    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((json.loads(request.content), request.headers["authorization"]))
        body = _sse(_text(""), _text("a"), _text("b"), _text(""), _text("c"),
                    {"choices": [], "usage": {"completion_tokens": 5}}, "[DONE]")  # fmt: skip
        return httpx.Response(200, content=body)

    result = asyncio.run(_send_to(handler, COMPLETIONS))
    assert result.success and result.error == ""
    assert (result.output_tokens, result.generated_text, len(result.itl)) == (5, "abc", 2)
    assert 0 < result.ttft <= result.latency
    body, auth = sent[0]
    assert auth == "Bearer k"
    assert body == {"model": "m", "temperature": 0.0, "prompt": "hello", "max_tokens": 4,
                    "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip


def test_chat_deltas_and_no_usage_count_pieces_of_text() -> None:
    import asyncio

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["max_completion_tokens"] == 4
        deltas = [{"role": "assistant"}, {"content": "x"}, {"content": "y"}, {"content": "z"}]
        chunks = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
        return httpx.Response(200, content=_sse(*chunks, "[DONE]"))

    chat = Endpoint(url="http://server/v1/chat/completions", model="m", chat=True)
    result = asyncio.run(_send_to(handler, chat))
    assert result.success and result.output_tokens == 3 and result.generated_text == "xyz"


def test_errors_in_the_stream_or_the_status_fail_the_request() -> None:
    import asyncio

    def in_stream(request: httpx.Request) -> httpx.Response:
        error = {"error": {"message": "engine died", "type": "InternalServerError"}}
        return httpx.Response(200, content=_sse(_text("a"), error, "[DONE]"))

    def status(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "prompt too long"}})

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    streamed = asyncio.run(_send_to(in_stream, COMPLETIONS))
    assert not streamed.success and streamed.error == "engine died"
    answered = asyncio.run(_send_to(status, COMPLETIONS))
    assert not answered.success and answered.error == "HTTP 400: prompt too long"
    unreachable = asyncio.run(_send_to(refused, COMPLETIONS))
    assert not unreachable.success and unreachable.error == "ConnectError: refused"


# ---- the command line --------------------------------------------------------------------


def test_flags_take_dashes_and_underscores() -> None:
    parse = build_parser().parse_args
    args = parse(["bench", "serve", "--num_prompts", "3", "--request-rate", "2.5",
                  "--max_concurrency", "4", "--percentile-metrics", "ttft"])  # fmt: skip
    assert (args.num_prompts, args.request_rate, args.max_concurrency) == (3, 2.5, 4)
    assert args.percentile_metrics == "ttft" and args.backend == "openai"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--random-range-ratio", "1.5"], "--random-range-ratio"),
        (["--sweep-rates", "1,x"], "--sweep-rates"),
        (["--sweep-rates", "1,2", "--request-rate", "3"], "--sweep-rates"),
        (["--request-rate", "0"], "above 0"),
        (["--percentile-metrics", "ttft,latency"], "--percentile-metrics"),
        (["--metric-percentiles", "0"], "--metric-percentiles"),
        (["--dataset-name", "sharegpt"], "--dataset-path"),
        (["--backend", "openai-chat", "--endpoint", "/v1/completions"], "--endpoint"),
        (["--base-url", "http://x:1", "--port", "2"], "--base-url"),
        (["--client-processes", "0"], "--client-processes"),
        (["--client-processes", "3", "--max-concurrency", "2"], "--client-processes"),
    ],
)
def test_wrong_flags_are_one_line_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["bench", "serve", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pagedllm: error: ") and message in err and "\n" not in err


def test_no_server_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["bench", "serve", "--base-url", url, "--num-prompts", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pagedllm: error: cannot reach the server at {url}/v1/models")


def test_failed_requests_are_reported_and_the_run_still_succeeds(
    char_tokenizer_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A fake server that refuses every third request after the test one."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) > 1 and len(calls) % 3 == 0:
            return httpx.Response(503, json={"error": {"message": "queue full"}})
        chunks = [_text("ab"), {"choices": [], "usage": {"completion_tokens": 2}}]
        return httpx.Response(200, content=_sse(*chunks, "[DONE]"))

    def fake_client(max_connections: int | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    monkeypatch.setattr(client_module, "make_client", fake_client)
    argv = ["bench", "serve", "--model", str(char_tokenizer_dir), "--num-prompts", "9",
            "--random-input-len", "8", "--random-output-len", "2", "--disable-tqdm",
            "--save-result", "--result-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 requests failed; the first errors:\n  HTTP 503: queue full" in out
    assert f"{'Failed requests:':<40} {3:<10}" in out
    (saved,) = tmp_path.glob("*.json")
    result = json.loads(saved.read_text())
    assert (result["completed"], result["total_output_tokens"]) == (6, 12)
    assert result["errors"].count("HTTP 503: queue full") == 3


# ---- against a real pagedllm serve -------------------------------------------------------


def _bench_flags(result_dir: Path) -> list[str]:
    return ["--num-prompts", "8", "--random-input-len", "16", "--random-output-len", "8",
            "--ignore-eos", "--save-result", "--plot", "--result-dir", str(result_dir)]  # fmt: skip


def _check_result(path: Path, request_rate: float | str) -> dict:
    result = json.loads(path.read_text())
    assert [k for k in JSON_KEYS if k not in result] == []
    assert result["completed"] == 8 and result["num_prompts"] == 8
    assert result["total_output_tokens"] == 8 * 8 and result["output_lens"] == [8] * 8
    assert result["total_input_tokens"] == 8 * 16 and result["errors"] == [""] * 8
    assert result["request_rate"] == request_rate
    assert path.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    return result


def test_a_run_against_pagedllm_serve(
    tiny_server: Server, tiny_chat_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # No --model and no --tokenizer: the server's first model, a local directory, is both.
    argv = ["bench", "serve", "--base-url", tiny_server.url, "--api-key", API_KEY,
            "--percentile-metrics", "ttft,tpot,itl,e2el", *_bench_flags(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for expected in SUMMARY_LINES + E2EL_LINES:
        assert any(line.startswith(expected) for line in lines), expected
    assert f"{'Successful requests:':<40} {8:<10}" in lines
    assert f"{'Total generated tokens:':<40} {64:<10}" in lines
    assert "8/8" in captured.err  # the progress bar
    (saved,) = tmp_path.glob("openai-infqps-*.json")
    assert saved.name.startswith(f"openai-infqps-{tiny_chat_model.name}-")
    result = _check_result(saved, "inf")
    assert result["model_id"] == result["tokenizer_id"] == str(tiny_chat_model)
    assert result["backend"] == "openai" and result["max_concurrency"] is None


def test_a_rate_sweep_of_chat_requests(
    tiny_server: Server,
    tiny_chat_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    port = tiny_server.url.rsplit(":", 1)[1]
    argv = ["bench", "serve", "--backend", "openai-chat", "--host", "127.0.0.1",
            "--port", port, "--model", str(tiny_chat_model), "--sweep-rates", "4,inf",
            "--max-concurrency", "2", "--num-warmups", "2", "--disable-tqdm",
            *_bench_flags(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(SUMMARY_LINES[0]) == 2
    assert f"{'Request rate configured (RPS):':<40} {'4.00':<10}" in out
    assert f"{'Maximum request concurrency:':<40} {2:<10}" in out
    assert "Request Rate Sweep" in out and "Warmup run completed." in out
    for rate, recorded in (("4.0", 4.0), ("inf", "inf")):
        (saved,) = tmp_path.glob(f"openai-chat-{rate}qps-concurrency2-*.json")
        result = _check_result(saved, recorded)
        assert result["max_concurrency"] == 2 and result["max_concurrent_requests"] <= 2
    (sweep,) = tmp_path.glob("openai-chat-sweep-concurrency2-*.png")
    assert sweep.read_bytes().startswith(PNG_MAGIC)


def test_client_processes_split_the_cap_and_follow_the_streams() -> None:
    from pagedllm.bench.sender_pool import MAX_PROCESSES, client_processes, split_cap

    assert split_cap(7, 3) == [3, 2, 2] and split_cap(None, 2) == [None, None]
    assert client_processes(None, 10) == 1 and client_processes(3, 10) == 3
    assert client_processes(None, 10_000) == min(MAX_PROCESSES, os.cpu_count() or 1)


def test_a_run_sent_from_two_client_processes(
    tiny_server: Server, tiny_chat_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The timed requests dealt to two processes: every request answered and timed on one
    clock (the duration covers every request), the concurrency cap kept across both."""
    argv = ["bench", "serve", "--base-url", tiny_server.url, "--api-key", API_KEY,
            "--client-processes", "2", "--max-concurrency", "3",
            *_bench_flags(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"{'Successful requests:':<40} {8:<10}" in captured.out.splitlines()
    assert "8/8" in captured.err  # the progress bar, fed by both processes
    (saved,) = tmp_path.glob("openai-infqps-concurrency3-*.json")
    result = _check_result(saved, "inf")
    assert 1 <= result["max_concurrent_requests"] <= 3
    assert all(len(gaps) <= 7 for gaps in result["itls"]) and any(result["itls"])
    assert result["duration"] >= max(result["ttfts"])
