"""``--config FILE.yaml`` and vLLM's short flags, as ``vllm serve`` reads them."""

from __future__ import annotations

import pytest

from pagedllm.entrypoints.cli.config_file import expand_config_file
from pagedllm.entrypoints.cli.main import build_parser, main

CONFIG = """
max-model-len: 1024
max_num_seqs: 8
enforce-eager: true
enable-prefix-caching: false
served-model-name: [a, b]
structured-outputs-config:
  disable_any_whitespace: true
port: 9001
"""


def parsed(tmp_path, *argv: str):
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    args = [a.replace("CONFIG", str(config)) for a in argv]
    return build_parser().parse_args(expand_config_file(args))


def test_the_file_gives_flags_and_the_command_line_wins(tmp_path):
    args = parsed(tmp_path, "serve", "my-model", "--config", "CONFIG", "--port", "9002")
    assert args.model_tag == "my-model"
    assert (args.max_model_len, args.max_num_seqs, args.enforce_eager) == ("1024", 8, True)
    assert args.enable_prefix_caching is None  # false: no flag, the default stays
    assert args.served_model_name == ["a", "b"]
    assert args.structured_outputs_config == {"disable_any_whitespace": True}
    assert args.port == 9002  # typed after --config: the command line wins
    assert parsed(tmp_path, "serve", "--config=CONFIG").port == 9001


def test_short_flags():
    args = build_parser().parse_args(["serve", "m", "-tp", "1", "-pp", "1", "-dp", "1", "-q",
                                      "fp8"])  # fmt: skip
    assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (1, 1)
    assert (args.data_parallel_size, args.quantization) == (1, "fp8")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.json", "{}", "takes a .yaml or .yml file"),
        ("c.yaml", "port: [1\n", "not valid YAML"),
        ("c.yaml", "- a\n- b\n", "must map flag names to values"),
        ("missing.yaml", None, "Cannot read the --config file"),
    ],
)
def test_bad_config_files_are_named(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert main(["serve", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_unsupported_values_from_the_file_are_refused_by_name(tmp_path, capsys):
    path = tmp_path / "tp.yaml"
    path.write_text("tensor-parallel-size: 2\n")
    assert main(["serve", "--config", str(path), "--port", "0"]) == 2
    assert "tensor_parallel_size" in capsys.readouterr().err


def test_every_engine_flag_has_help_from_its_field():
    from pagedllm.config import EngineArgs
    from pagedllm.entrypoints.cli.engine_flags import field_docs

    docs = field_docs(EngineArgs)
    assert set(docs) == set(EngineArgs.field_names())
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    engine = next(g for g in serve._action_groups if g.title == "engine")
    assert all(action.help for action in engine._group_actions)
    assert "--max-model-len" in serve.format_help() and docs["max_model_len"][:20] in " ".join(
        serve.format_help().split()
    )


def test_flags_that_do_not_fit_say_so(caplog):
    """A GGUF model with load_format safetensors is refused; gpu_memory_utilization on the
    CPU runs, with a warning naming it (a GPU machine's command keeps working)."""
    import logging

    from pagedllm.config import EngineArgs

    with pytest.raises(ValueError, match="is a GGUF model"):
        EngineArgs(load_format="safetensors", device="cpu").create_engine_config()
    with caplog.at_level(logging.WARNING):
        EngineArgs(gpu_memory_utilization=0.5, device="cpu").create_engine_config()
        EngineArgs(device="cpu").create_engine_config()
    warned = [r.getMessage() for r in caplog.records if "gpu_memory_utilization" in r.getMessage()]
    assert warned == [
        "gpu_memory_utilization=0.5 does not apply on the CPU: the KV cache takes "
        "kv_cache_memory_bytes (default 1 GiB)."
    ]


def test_download_dir_is_where_a_repo_id_is_looked_up(tmp_path):
    """vLLM's --download-dir: a Hugging Face cache laid out as its downloads leave it."""
    from pagedllm.config import EngineArgs
    from tests.conftest import save_tiny_model

    repo = tmp_path / "models--acme--tiny"
    save_tiny_model("llama", repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    args = dict(model="acme/tiny", skip_tokenizer_init=True, device="cpu")
    config = EngineArgs(**args, download_dir=str(tmp_path)).create_engine_config()
    assert config.model_config.files.config_dir == repo / "snapshots" / "abc123"
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        EngineArgs(**args, download_dir=str(tmp_path / "empty")).create_engine_config()


def test_sizes_and_token_counts_read_as_vllm_reads_them():
    from pagedllm.config import EngineArgs, parse_size

    assert parse_size("8g") == 8 * 10**9 and parse_size("8G") == 8 << 30
    assert parse_size("512M") == 512 << 20 and parse_size("2GiB") == 2 << 30
    assert parse_size("64m") == 64 * 10**6 and parse_size(4096) == 4096
    with pytest.raises(ValueError, match="Cannot read a size"):
        parse_size("8 gigs")
    config = EngineArgs(max_num_batched_tokens="8k", device="cpu").create_engine_config()
    assert config.scheduler_config.max_num_batched_tokens == 8000
    args = build_parser().parse_args(["serve", "--max-num-batched-tokens", "2K"])
    assert args.max_num_batched_tokens == "2K"
