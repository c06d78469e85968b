"""``pagedllm serve [MODEL] [flags]``: the OpenAI-compatible server (vLLM's ``vllm serve``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from pagedllm.entrypoints.cli.engine_flags import add_engine_flags
    from pagedllm.entrypoints.cli.server_options import add_server_option_flags
    from pagedllm.entrypoints.openai.api_server import add_server_flags

    parser = subparsers.add_parser(
        "serve", help="Serve a model over an OpenAI-compatible HTTP API."
    )
    parser.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="model directory, .gguf file or Hugging Face repo id, downloaded on first use "
        "(default: bundled SmolLM2)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="flags from a YAML file (flag: value per line); the command line's own win",
    )  # read before parsing, by config_file.expand_config_file
    add_server_flags(parser)
    add_server_option_flags(parser)
    add_engine_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.cli.server_options import server_options_from
    from pagedllm.entrypoints.openai.api_server import run_server

    server_options_from(args)  # refuses vLLM's flags at values pagedllm cannot honour
    if args.model_tag is not None:
        if args.model is not None and args.model != args.model_tag:
            raise ValueError(
                f"Two models given: {args.model_tag!r} and --model {args.model!r}; pass one."
            )
        args.model = args.model_tag
    return run_server(args)
