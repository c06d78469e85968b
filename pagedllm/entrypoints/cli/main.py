"""``pagedllm``: the command-line entry point."""

from __future__ import annotations

import argparse
import sys

from pagedllm.version import __version__


def build_parser() -> argparse.ArgumentParser:
    from pagedllm.entrypoints.cli import bench, chat, serve

    parser = argparse.ArgumentParser(
        prog="pagedllm", description="Serve large language models fast to many users at once."
    )
    parser.add_argument("--version", action="version", version=f"pagedllm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (serve, chat, bench):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pagedllm.entrypoints.cli.config_file import expand_config_file
    from pagedllm.entrypoints.cli.vllm_argv import normalize_vllm_argv
    from pagedllm.unused_modules import hide_unused_libraries

    hide_unused_libraries()  # pagedllm's process: no image processing or assisted generation

    parser = build_parser()
    try:
        argv = expand_config_file(sys.argv[1:] if argv is None else list(argv))
        argv = normalize_vllm_argv(argv)  # -O3, --json-flag.key value, as vLLM reads them
    except ValueError as exc:
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # bad flags, a model that cannot load: one clear line
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
