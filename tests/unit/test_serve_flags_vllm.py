"""Every flag of ``vllm serve`` 0.26 is known to ``pagedllm serve``: it parses and starts at
vLLM's default, or is refused with a sentence naming it; each has help text. Parse-level
tests: no weights load (create_engine_config reads the bundled model's config only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pagedllm.config import EngineArgs
from pagedllm.entrypoints.cli.engine_flags import engine_args_from
from pagedllm.entrypoints.cli.main import build_parser, main
from pagedllm.entrypoints.cli.server_options import server_options_from
from pagedllm.entrypoints.cli.vllm_argv import normalize_vllm_argv

VLLM_FLAGS = Path(__file__).with_name("vllm_0_26_serve_flags.txt")


def serve_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]


def parse(*argv: str) -> argparse.Namespace:
    """argv after ``pagedllm serve``, through the same rewriting as main()."""
    return serve_parser().parse_args(normalize_vllm_argv(list(argv)))


def configure(*argv: str) -> object:
    args = parse("--device", "cpu", *argv)
    server_options_from(args)
    return engine_args_from(args).create_engine_config()


def test_every_vllm_serve_flag_is_known():
    wanted = [
        line.strip()
        for line in VLLM_FLAGS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    known = {option for action in serve_parser()._actions for option in action.option_strings}
    assert len(wanted) > 300
    assert [flag for flag in wanted if flag not in known] == []


def test_every_serve_flag_has_help_text():
    missing = [
        action.option_strings or action.dest
        for action in serve_parser()._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_a_vllm_command_line_at_vllm_defaults_starts():
    """A sample of the newly known flags, each at vLLM's default (or a value with no effect
    here), parses and configures an engine."""
    argv = [
        "--no-headless", "--no-grpc", "-asc", "1",
        "--chat-template-content-format", "auto", "--fingerprint-mode", "full",
        "--enable-log-deltas", "--no-tokens-only", "--h11-max-header-count", "256",
        "--no-enable-expert-parallel", "-dcp", "1", "-pcp", "1", "-n", "1", "-r", "0",
        "--data-parallel-backend", "mp", "--all2all-backend", "allgather_reducescatter",
        "--prefix-caching-hash-algo", "sha256", "--logprobs-mode", "raw_logprobs",
        "--disable-cascade-attn", "--no-disable-cascade-attn", "--language-model-only",
        "--mm-processor-cache-gb", "4", "--max-num-partial-prefills", "1",
        "--stream-interval", "1", "--performance-mode", "balanced", "--ignore-patterns",
        "original/**/*", "--safetensors-prefetch-block-size", "16777216",
        "--disable-hybrid-kv-cache-manager", "--aggregate-engine-logging", "-O2",
        "--lora-dtype", "auto", "--allowed-media-domains", "example.com",
        "--eplb-config", "{}", "--no-enable-log-requests", "--no-trust-request-chat-template",
    ]  # fmt: skip
    config = configure(*argv)
    assert config.model_config.max_model_len == 8192  # type: ignore[attr-defined]
    assert parse(*argv).api_server_count == 1
    from pagedllm.entrypoints.openai.api_server import check_server_flags

    check_server_flags(parse("--max-loras", "1", "--max-lora-rank", "16"))  # vLLM's defaults
    with pytest.raises(ValueError, match="--max-loras: LoRA adapters are not supported"):
        check_server_flags(parse("--max-loras", "2"))


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["-ep"], "--enable-expert-parallel: expert parallelism for mixture-of-experts models"),
        (["--logprobs-mode", "processed_logprobs"], "--logprobs-mode 'processed_logprobs': "),
        (["--no-enable-log-deltas"], "--no-enable-log-deltas: whether logged outputs"),
        (["--grpc"], "--grpc: a gRPC server instead of HTTP; pagedllm serves HTTP only."),
        (["--kv-offloading-backend", "lmcache"], "--kv-offloading-backend 'lmcache': the KV"),
        (["--middleware", "x.y"], "--middleware ['x.y']: ASGI middleware imported by path"),
        (["--spec-method", "eagle"], "--spec-method 'eagle': the speculative decoding method"),
    ],
)
def test_unsupported_values_are_refused_with_a_sentence(argv, sentence, capsys):
    assert main(["serve", "--device", "cpu", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert sentence in err and "Remove the flag." in err


def test_help_says_which_values_are_accepted():
    help_text = " ".join(serve_parser().format_help().split())
    assert "Expert parallelism for mixture-of-experts models" in help_text
    assert "Accepted as False only (vLLM's default)" in help_text


def test_llm_keywords_are_checked_alike():
    with pytest.raises(ValueError, match="--enable-expert-parallel: expert parallelism"):
        EngineArgs(device="cpu", enable_expert_parallel=True).create_engine_config()
    EngineArgs(device="cpu", enable_expert_parallel=False).create_engine_config()


# -- max_model_len auto / -1 ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", "-1", "AUTO"])
def test_max_model_len_auto_is_the_models_maximum_when_it_fits(value):
    assert configure("--max-model-len", value).model_config.max_model_len == 8192  # type: ignore[attr-defined]


def test_max_model_len_auto_fits_the_kv_cache():
    """SmolLM2-135M in float32 takes 46080 bytes of KV per token: 64 MiB holds 91 blocks of
    16 tokens, so one request can be 1456 tokens long (vLLM's auto-fit)."""
    config = configure("--max-model-len", "-1", "--kv-cache-memory-bytes", "64M")
    assert config.model_config.max_model_len == 1456  # type: ignore[attr-defined]
    assert config.scheduler_config.max_num_batched_tokens <= 2048  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="holds no block"):
        configure("--max-model-len", "auto", "--kv-cache-memory-bytes", "1000")
    # An explicit length is kept (and checked against the cache when the engine starts).
    assert configure("--max-model-len", "4k").model_config.max_model_len == 4000  # type: ignore[attr-defined]


# -- -O, --compilation-config and CUDA graph sizes ----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "eager"),
    [
        (["-O0"], True),
        (["-O", "0"], True),
        (["-O=0"], True),
        (["--optimization-level", "0"], True),
        (["-O3"], False),
        (["-O1"], False),
        ([], False),
        (["-O3", "--enforce-eager"], True),
        (["-cc.cudagraph_mode", "NONE"], True),
        (["--compilation-config", '{"cudagraph_mode": "FULL_AND_PIECEWISE"}'], False),
        (["--compilation_config.mode=0"], False),
    ],
)
def test_optimization_level_and_cudagraph_mode_map_to_eager(argv, eager):
    assert configure(*argv).enforce_eager is eager  # type: ignore[attr-defined]


def test_capture_sizes_from_flags_and_compilation_config():
    config = configure(
        "--cudagraph-capture-sizes", "4", "1", "2", "--max-cudagraph-capture-size", "2"
    )
    assert config.cudagraph_capture_sizes == (1, 2, 4)  # type: ignore[attr-defined]
    assert config.max_cudagraph_capture_size == 2  # type: ignore[attr-defined]
    config = configure("-cc.cudagraph_capture_sizes+", "8,16", "-cc.cudagraph_capture_sizes+=1")
    assert config.cudagraph_capture_sizes == (1, 8, 16)  # type: ignore[attr-defined]

    from pagedllm.worker.cuda_graphs import capture_sizes

    assert capture_sizes(256, (1, 2, 4, 512)) == [1, 2, 4]  # a batch never exceeds 256
    assert capture_sizes(256, None, 64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert capture_sizes(256, (1, 2, 4), 2) == [1, 2]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    with pytest.raises(ValueError, match="none is at most 8"):
        capture_sizes(8, (16, 32))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-O4"], "must be 0, 1, 2 or 3"),
        (["-cc.mode", "3"], "compilation_config mode 3: pagedllm does not use torch.compile"),
        (["-cc.cudagraph_mode", "PIECEWISE"], "cudagraph_mode 'PIECEWISE' is not supported"),
        (["-cc.pass_config.fuse_norm_quant", "true"], "compilation_config pass_config: not"),
        (["--cudagraph-capture-sizes", "0"], "must be positive integers"),
    ],
)
def test_compilation_options_pagedllm_lacks_are_refused_by_name(argv, message):
    with pytest.raises(ValueError, match=message):
        configure(*argv)


# -- vLLM's argument spellings -----------------------------------------------------------------


def test_dotted_json_flags_merge_as_vllm_reads_them():
    argv = normalize_vllm_argv(
        ["serve", "m", "--structured-outputs-config.backend", "xgrammar",
         "--structured_outputs_config.disable_any_whitespace=true", "--max_model_len=8k",
         "--x", "-0.5", "-O3"]
    )  # fmt: skip
    assert argv[:2] == ["serve", "m"]
    assert "--max-model-len=8k" in argv and argv[3:5] == ["--x", "-0.5"]
    assert argv[argv.index("--optimization-level") + 1] == "3"
    config = json.loads(argv[argv.index("--structured-outputs-config") + 1])
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}
    with pytest.raises(ValueError, match="needs a value"):
        normalize_vllm_argv(["--compilation-config.mode"])


def test_vllm_flags_in_a_config_file(tmp_path):
    from pagedllm.entrypoints.cli.config_file import expand_config_file

    path = tmp_path / "serve.yaml"
    path.write_text(
        "enable-expert-parallel: false\nmax_model_len: auto\noptimization-level: 0\n"
        "compilation-config: {cudagraph_capture_sizes: [1, 2]}\nno-grpc: true\n"
    )
    argv = normalize_vllm_argv(expand_config_file(["serve", "--config", str(path)]))
    args = build_parser().parse_args([*argv, "--device", "cpu"])
    config = engine_args_from(args).create_engine_config()
    assert config.enforce_eager and config.cudagraph_capture_sizes == (1, 2)
    assert config.model_config.max_model_len == 8192


# -- --shutdown-timeout -----------------------------------------------------------------------


def test_shutdown_timeout_defaults_to_vllms_zero():
    """vLLM 0.26: 0 (the default) aborts requests in flight at once on SIGTERM; N > 0 lets
    them run up to N seconds first. pagedllm's drain does the same (tests/server/
    test_shutdown.py runs it)."""
    from pagedllm.entrypoints.openai.limits import ServerLimits

    assert parse().shutdown_timeout == 0
    assert ServerLimits().shutdown_timeout_s == 0
    assert ServerLimits.from_args(parse("--shutdown-timeout", "5")).shutdown_timeout_s == 5
    with pytest.raises(ValueError, match="--shutdown-timeout must be >= 0"):
        ServerLimits.from_args(parse("--shutdown-timeout", "-1"))


def test_server_switches_take_no_forms():
    args = parse("--enable-request-id-headers", "--no-enable-request-id-headers",
                 "--no-disable-fastapi-docs", "--no-allow-credentials")  # fmt: skip
    assert args.enable_request_id_headers is False and args.disable_fastapi_docs is False
    assert parse("--ssl-ciphers", "ECDHE+AESGCM").ssl_ciphers == "ECDHE+AESGCM"


# -- --uds, --log-config-file, python -m ...api_server ------------------------------------------


def test_uds_binds_a_unix_socket_and_replaces_only_a_stale_socket(tmp_path):
    import socket

    from pagedllm.entrypoints.cli.server_options import bind_unix

    path = tmp_path / "s.sock"
    first = bind_unix(str(path))
    assert first.family == socket.AF_UNIX and path.is_socket()
    first.close()  # a server that ended leaves its socket file: the next one replaces it
    bind_unix(str(path)).close()
    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    with pytest.raises(ValueError, match="not a socket is already there"):
        bind_unix(str(regular))
    assert regular.read_text() == "keep me"


def test_log_config_file_is_applied_and_handed_to_uvicorn(tmp_path):
    import logging

    path = tmp_path / "log.json"
    path.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "loggers": {"pagedllm.test_flag": {"level": "ERROR"}},
    }))  # fmt: skip
    args = parse("--log-config-file", str(path))
    server_options_from(args)
    assert args.log_config["loggers"] == {"pagedllm.test_flag": {"level": "ERROR"}}
    assert logging.getLogger("pagedllm.test_flag").level == logging.ERROR
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a logging"):
        server_options_from(parse("--log-config-file", str(path)))
    with pytest.raises(ValueError, match="Cannot read --log-config-file"):
        server_options_from(parse("--log-config-file", str(tmp_path / "missing.json")))


def test_the_api_server_module_knows_the_same_flags(capsys):
    from pagedllm.entrypoints.openai import api_server

    known = {o for action in api_server.make_parser()._actions for o in action.option_strings}
    wanted = {line for line in VLLM_FLAGS.read_text().splitlines() if line.startswith("-")}
    assert wanted - known == {"--config"}  # the YAML file is the pagedllm command's
    assert api_server.main(["--device", "cpu", "--port", "0", "-O3", "--grpc"]) == 2
    assert "--grpc: a gRPC server instead of HTTP" in capsys.readouterr().err


def test_kv_offloading_size_sizes_the_host_tier_for_all_ranks_together():
    """vLLM's native KV offloading flags: the GiB are shared by the ranks (--swap-space is
    per rank), and the backend named by vLLM's default starts."""
    config = configure("--kv-offloading-size", "0.5", "--kv-offloading-backend", "native")
    assert config.cache_config.swap_space_bytes == 1 << 29
    per_rank = configure("--kv-offloading-size", "0.5", "--pipeline-parallel-size", "2")
    assert per_rank.cache_config.swap_space_bytes == 1 << 28
    with pytest.raises(ValueError, match="swap_space and kv_offloading_size both size"):
        configure("--kv-offloading-size", "0.5", "--swap-space", "1")
