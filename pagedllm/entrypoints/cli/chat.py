"""``pagedllm chat [MODEL]``: a streamed chat in the terminal.

With ``--message`` it answers that one message and exits; otherwise it reads messages from
standard input until end of file (Ctrl-D), ``exit`` or ``quit`` (or Ctrl-C), keeping the
conversation; in a terminal it says so first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pagedllm.entrypoints.cli.engine_flags import add_engine_flags, engine_args_from

# Ctrl-C ends the command quietly (pagedllm's main turns KeyboardInterrupt into exit 130).
LEAVE_HINT = "Type a message and press Enter. To leave: Ctrl-D, Ctrl-C, or type exit (or quit)."


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("chat", help="Chat with a model in the terminal, streamed.")
    parser.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="model directory, .gguf file or repo id, downloaded on first use (default: "
        "the bundled SmolLM2)",
    )
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--message", "-m", default=None, help="answer this message and exit")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=0.95)
    parser.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=512)
    parser.add_argument("--chat-template", "--chat_template", dest="chat_template", default=None)
    add_engine_flags(parser, skip={"model"})
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pagedllm.engine.llm_engine import LLMEngine
    from pagedllm.inputs.chat import load_chat_template, prepare_chat, render_chat
    from pagedllm.sampling_params import RequestOutputKind, SamplingParams

    engine_args = engine_args_from(args)
    engine_args.model = args.model_tag or engine_args.model
    if args.disable_log_stats is None:
        engine_args.disable_log_stats = True
    template = load_chat_template(args.chat_template)  # the user's own file or text
    engine = LLMEngine.from_engine_args(engine_args)
    tokenizer = engine.get_tokenizer()
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        output_kind=RequestOutputKind.DELTA,
    )
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    messages = [args.message] if args.message is not None else _read_messages()
    for turn, message in enumerate(messages):
        history.append({"role": "user", "content": message})
        prompt = render_chat(prepare_chat(tokenizer, history, chat_template=template))
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        reply = _stream_reply(engine, f"chat-{turn}", {"prompt_token_ids": ids}, params)
        history.append({"role": "assistant", "content": reply})
    return 0


def _read_messages() -> Any:
    interactive = sys.stdin.isatty()
    if interactive:
        print(LEAVE_HINT, flush=True)
    while True:
        if interactive:
            print("\n>>> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return
        if line.strip():
            yield line.strip()


def _stream_reply(engine: Any, request_id: str, prompt: dict, params: Any) -> str:
    engine.add_request(request_id, prompt, params)
    pieces = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            text = output.outputs[0].text
            pieces.append(text)
            print(text, end="", flush=True)
    print(flush=True)
    return "".join(pieces)
