"""vLLM 0.26's server (frontend) flags that ``pagedllm serve`` knows beyond its own, so a
``vllm serve`` command line starts or fails with a sentence naming the flag.

As ``VllmEngineOptions`` for the engine: one field per flag, its docstring the help text
and the reason of a refusal, ``accepts`` the values that start (vLLM's default, or values
with nothing to act on here). Fields without ``accepts`` are implemented by the server.
"""

# only() and any_value() return dataclasses.field(...), which RUF009 cannot see through.
# ruff: noqa: RUF009

from __future__ import annotations

import argparse
import dataclasses
import json
import logging.config
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagedllm.engine.vllm_options import any_value, only, refusals


@dataclass(kw_only=True)
class VllmServerOptions:
    """vLLM 0.26's frontend flags beyond pagedllm's own (see the module docstring)."""

    ssl_ciphers: str | None = None
    """TLS ciphers the server offers (an OpenSSL cipher string; default: OpenSSL's)."""
    uds: str | None = None
    """Listen on this Unix domain socket path instead of --host and --port."""
    log_config_file: str | None = None
    """A JSON logging configuration (logging.config.dictConfig's schema) for the server
    process's loggers, pagedllm's and uvicorn's, applied at start (the engine core process
    keeps the default format)."""
    chat_template_content_format: str = only("auto", "string")
    """How message content reaches the chat template; pagedllm flattens text parts into one
    string (auto or string), never OpenAI's list of parts."""
    fingerprint_mode: str = only("full", "none")
    """The system_fingerprint of responses (full, hash, custom, none); pagedllm sets none,
    and accepts vLLM's default."""
    fingerprint_value: str | None = only(None)
    """A fixed system_fingerprint (with fingerprint-mode custom); pagedllm sets none."""
    headless: bool = only(False)
    """Engines without an API server, for multi-node data parallelism; pagedllm runs one
    engine behind its server."""
    grpc: bool = only(False)
    """A gRPC server instead of HTTP; pagedllm serves HTTP only."""
    return_tokens_as_token_ids: bool = False
    """Logprob tokens written as token_id:N, for tokens that are no whole characters alone
    (a request's return_tokens_as_token_ids overrides it)."""
    tool_server: str | None = only(None)
    """Built-in tool servers for the Responses API; pagedllm runs function tools only (the
    client runs them)."""
    enable_per_request_metrics: bool = only(False)
    """Timing metrics in each response; not supported by pagedllm (see /metrics)."""
    enable_server_load_tracking: bool = only(False)
    """The /load endpoint's count of requests in progress; not supported by pagedllm."""
    enable_tokenizer_info_endpoint: bool = only(False)
    """The /tokenizer_info endpoint; not supported by pagedllm."""
    enable_log_deltas: bool = only(True)
    """Whether logged outputs of streams include each delta; pagedllm's output log has no
    such switch."""
    log_error_stack: bool = only(False)
    """Stack traces of error responses in the log; not supported by pagedllm."""
    tokens_only: bool = only(False)
    """Serving only the tokens-in, tokens-out endpoint; pagedllm serves its whole API."""
    data_parallel_supervisor_port: int = only(9256)
    """The data-parallel supervisor's port; pagedllm runs one engine."""
    dp_supervisor_probe_interval_s: float = only(5.0)
    """How often the data-parallel supervisor probes; pagedllm runs one engine."""
    dp_supervisor_probe_timeout_s: float = only(5.0)
    """The data-parallel supervisor's probe timeout; pagedllm runs one engine."""
    dp_supervisor_probe_failure_threshold: int = only(3)
    """Failed probes before the data-parallel supervisor acts; pagedllm runs one engine."""
    enable_ssl_refresh: bool = only(False)
    """Reloading TLS certificates when their files change; not supported by pagedllm."""
    middleware: list[str] = only([])
    """ASGI middleware imported by path; pagedllm imports no code named on the command
    line."""
    h11_max_incomplete_event_size: int = only(4194304)
    """h11's limit on a partial HTTP event; pagedllm bounds requests with
    --max-request-body-bytes and --request-header-timeout."""
    h11_max_header_count: int = only(256)
    """h11's limit on header count; pagedllm bounds headers with --request-header-timeout
    and h11's size limit."""
    enable_flash_late_interaction: bool = any_value(True)
    """Fast late-interaction scoring for ColBERT-style models; pagedllm serves generation
    models only."""


def add_server_option_flags(parser: argparse.ArgumentParser) -> None:
    from pagedllm.entrypoints.cli.engine_flags import add_dataclass_flags

    group = parser.add_argument_group("vLLM server options")
    add_dataclass_flags(group, VllmServerOptions)


def server_options_from(args: argparse.Namespace) -> VllmServerOptions:
    """The options given on the command line (the others at their defaults); ValueError
    with one sentence per flag set to a value pagedllm cannot honour. Applies
    --log-config-file, and leaves the configuration in ``args.log_config`` for uvicorn."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(VllmServerOptions)
        if getattr(args, f.name, None) is not None
    }
    options = VllmServerOptions(**values)
    refused = refusals(options)
    if refused:
        raise ValueError(" ".join(refused))
    if options.log_config_file:
        args.log_config = load_log_config(options.log_config_file)
        logging.config.dictConfig(args.log_config)
    return options


def load_log_config(path: str) -> dict[str, Any]:
    """The JSON object in ``path`` (ValueError naming the file and what is wrong)."""
    try:
        config = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"Cannot read --log-config-file {path!r}: {exc.strerror}.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--log-config-file {path!r} is not valid JSON: {exc}.") from None
    if not isinstance(config, dict) or "version" not in config:
        raise ValueError(
            f"--log-config-file {path!r} must hold a logging.config.dictConfig object "
            '(with "version": 1).'
        )
    return config


def bind_unix(path: str) -> socket.socket:
    """A stream socket bound at ``path`` (--uds). A socket file left by an earlier server is
    replaced; any other file there is an error, never removed."""
    target = Path(path)
    if target.is_socket():
        target.unlink()
    elif target.exists():
        raise ValueError(f"--uds {path!r}: a file that is not a socket is already there.")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ValueError(f"Cannot listen on the Unix socket {path!r}: {exc.strerror}.") from exc
    return sock
