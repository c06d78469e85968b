"""The OpenAI-compatible server: ``pagedllm serve MODEL`` or
``python -m pagedllm.entrypoints.openai.api_server --model MODEL``.

build_app() adapts HTTP to one AsyncLLM; run_server() binds the port first (so a busy port
fails before the model loads), starts the engine, then serves with uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from pagedllm import envs
from pagedllm.config import UsageContext
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.engine.engine_process import cancelled_on_error, start_early
from pagedllm.engine.heap import widen_young_generation
from pagedllm.entrypoints.cli.engine_flags import add_engine_flags, engine_args_from
from pagedllm.entrypoints.cli.server_options import (
    add_server_option_flags,
    bind_unix,
    server_options_from,
)
from pagedllm.entrypoints.llm import generation_defaults
from pagedllm.entrypoints.openai.chat_renderer import ChatRenderer
from pagedllm.entrypoints.openai.docs import install_docs
from pagedllm.entrypoints.openai.errors import error_response, install_error_handlers
from pagedllm.entrypoints.openai.http_protocol import protocol_class
from pagedllm.entrypoints.openai.json_body import StrictJSONRoute
from pagedllm.entrypoints.openai.limits import ServerLimits, add_limit_flags, max_connections
from pagedllm.entrypoints.openai.middleware import (
    AccessLogFilter,
    ApiKeyMiddleware,
    ErrorMiddleware,
    HeaderSizeMiddleware,
    RequestBodyMiddleware,
    RequestIdHeaderMiddleware,
    ServingStateMiddleware,
    unless_disconnected,
)
from pagedllm.entrypoints.openai.openapi import install_openapi
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerateRequest,
    TokenizeRequest,
)
from pagedllm.entrypoints.openai.reasoning import REASONING_PARSER_NAMES, get_reasoning_parser
from pagedllm.entrypoints.openai.server_processes import EngineConnection, run_api_servers
from pagedllm.entrypoints.openai.serving_chat import ChatHandler, ChatOptions
from pagedllm.entrypoints.openai.serving_completion import CompletionHandler
from pagedllm.entrypoints.openai.serving_generate import GenerateHandler
from pagedllm.entrypoints.openai.serving_messages import install_messages_routes
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.serving_responses import install_responses_routes
from pagedllm.entrypoints.openai.serving_tokenization import TokenizationHandler
from pagedllm.entrypoints.openai.shutdown import GracefulServer, ServingState
from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSER_NAMES, get_tool_parser
from pagedllm.entrypoints.openai.web_ui import install_web_ui
from pagedllm.inputs.chat import load_chat_template
from pagedllm.inputs.template_sandbox import RenderLimits, TemplateSandbox
from pagedllm.logger import init_logger, set_log_level
from pagedllm.metrics.http import MetricsServer, add_metrics_route, instrument, serve_with_metrics
from pagedllm.metrics.prometheus import PrometheusStatLogger
from pagedllm.version import __version__

logger = init_logger(__name__)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


# -- flags ---------------------------------------------------------------------------------


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """Server flags with vLLM's names; dash or underscore spellings both work."""

    def flag(name: str, short: str | None = None, **kwargs: Any) -> None:
        spellings = [f"--{name}"]
        if "-" in name:
            spellings.append(f"--{name.replace('-', '_')}")
        if short:
            spellings.append(short)
        if kwargs.get("action") == "store_true":  # vLLM's switches also take --no-NAME
            kwargs.update(action=argparse.BooleanOptionalAction, default=False)
        parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)

    flag("host", default=None, help="interface to bind (default: all)")
    flag("port", type=int, default=8000, help="port to listen on")
    flag("metrics-port", type=int, default=None,
         help="also serve /metrics on this port (same host)")  # fmt: skip
    flag("api-key", nargs="+", default=None,
         help="require one of these keys, as 'Authorization: Bearer KEY' or 'x-api-key: KEY' "
              "(each of the two sent must hold one; default: PAGEDLLM_API_KEY or "
              "VLLM_API_KEY)")  # fmt: skip
    flag("chat-template", default=None, help="a Jinja chat template, or a file holding one")
    flag("trust-request-chat-template", action="store_true",
         help="let requests bring their own chat_template (refused by default)")  # fmt: skip
    flag("reasoning-parser", default=None, choices=REASONING_PARSER_NAMES,
         help="split the model's reasoning from its answer, as this family writes it")  # fmt: skip
    flag("enable-reasoning", action="store_true", help="(older vLLM flag) with --reasoning-parser")
    flag("enable-auto-tool-choice", action="store_true", help='tool_choice "auto" (with a parser)')
    flag("tool-call-parser", default=None, choices=TOOL_PARSER_NAMES,
         help="read tool calls from the text, as this model family writes them")  # fmt: skip
    flag("tool-parser-plugin", default="", help="not supported: the built-in parsers only")
    flag("exclude-tools-when-tool-choice-none", action="store_true",
         help='leave the tools out of the prompt when tool_choice is "none"')  # fmt: skip
    flag("response-role", default="assistant", help="the role name of chat responses")
    flag(
        "default-chat-template-kwargs",
        type=_json_object,
        default=None,
        help="JSON object: chat template variables for every request (a request's own "
        "chat_template_kwargs win)",
    )
    flag(
        "enable-force-include-usage",
        action="store_true",
        help="end every stream with a usage chunk, asked for or not",
    )
    flag(
        "enable-prompt-tokens-details",
        action="store_true",
        help="usage carries prompt_tokens_details.cached_tokens (off: a client could tell "
        "whether a prompt it guesses is in the prefix cache)",
    )
    for lora in ("max-loras", "max-lora-rank", "max-cpu-loras"):
        flag(lora, type=int, default=None, help="not supported: no LoRA adapters yet")
    flag("lora-modules", nargs="+", default=None, help="not supported: no LoRA adapters yet")
    flag(
        "enable-log-requests",
        action="store_true",
        help="log each request's prompt and sampling parameters (off: prompts are user data)",
    )
    flag(
        "enable-log-outputs",
        action="store_true",
        help="with --enable-log-requests, also log each response's text and token ids",
    )
    flag(
        "max-log-len",
        type=int,
        default=None,
        help="the most prompt/output characters and token ids a log line shows (no limit)",
    )
    flag("disable-log-requests", action="store_true",
         help="(older vLLM flag) request logging is already off unless enabled")  # fmt: skip
    # Any case (DEBUG or debug), as vLLM users write it.
    flag("log-level", default=None, type=str.lower, choices=LOG_LEVELS,
         help="the server's log level: pagedllm's own loggers and uvicorn's (default: "
              "PAGEDLLM_LOGGING_LEVEL, else info)")  # fmt: skip
    flag("uvicorn-log-level", default=None, type=str.lower, choices=LOG_LEVELS,
         help="uvicorn's log level (default: --log-level)")  # fmt: skip
    flag("disable-uvicorn-access-log", action="store_true", help="no line per HTTP request")
    flag(
        "disable-access-log-for-endpoints",
        default=None,
        help="comma-separated paths whose requests the access log leaves out (e.g. "
        "/health,/metrics)",
    )
    flag(
        "enable-request-id-headers",
        action="store_true",
        help="every response carries X-Request-Id (the request's own if it sent one)",
    )
    flag("root-path", default=None, help="FastAPI root_path behind a path-routing proxy")
    flag(
        "disable-fastapi-docs", action="store_true", help="serve no /openapi.json, /docs or /redoc"
    )
    flag("disable-web-ui", action="store_true", help="serve no chat page at /")
    flag("enable-offline-docs", action="store_true",
         help="(vLLM flag) /docs and /redoc always load their scripts from here")  # fmt: skip
    flag("ssl-keyfile", default=None, help="TLS private key file (with --ssl-certfile)")
    flag("ssl-certfile", default=None, help="TLS certificate file: serve HTTPS")
    flag("ssl-ca-certs", default=None, help="CA certificates file to check client certificates")
    flag("ssl-cert-reqs", type=int, default=0,
         help="client certificates: 0 not asked, 1 optional, 2 required (ssl.CERT_*)")  # fmt: skip
    flag("allowed-origins", type=json.loads, default=["*"],
         help="CORS: JSON list of allowed origins, e.g. '[\"*\"]'")  # fmt: skip
    flag("allowed-methods", type=json.loads, default=["*"], help="CORS: JSON list of methods")
    flag("allowed-headers", type=json.loads, default=["*"], help="CORS: JSON list of headers")
    flag("allow-credentials", action="store_true", help="CORS: allow credentials")
    flag("api-server-count", short="-asc", type=int, default=1,
         help="API server processes sharing the engine core (for high request rates)")  # fmt: skip
    add_limit_flags(flag)


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def check_server_flags(args: argparse.Namespace) -> None:
    # vLLM's defaults (max_loras 1, max_lora_rank 16) start: they ask for no adapter.
    lora_defaults = {"max_loras": 1, "max_lora_rank": 16, "max_cpu_loras": None,
                     "lora_modules": None}  # fmt: skip
    lora = [name for name, default in lora_defaults.items()
            if getattr(args, name) not in (None, default)]  # fmt: skip
    if lora:
        flags = ", ".join("--" + name.replace("_", "-") for name in lora)
        raise ValueError(f"{flags}: LoRA adapters are not supported by pagedllm yet.")
    if args.enable_reasoning and not args.reasoning_parser:
        raise ValueError("--enable-reasoning needs --reasoning-parser (e.g. deepseek_r1).")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser (e.g. hermes).")
    if args.tool_parser_plugin:
        raise ValueError("--tool-parser-plugin is not supported by pagedllm yet.")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}.")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        raise ValueError(f"--metrics-port must be in 1..65535, got {args.metrics_port}.")
    if args.metrics_port is not None and args.metrics_port == args.port:
        raise ValueError("--metrics-port must differ from --port.")
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        raise ValueError("--ssl-keyfile and --ssl-certfile go together.")
    if args.enable_log_requests and args.disable_log_requests:
        raise ValueError("--enable-log-requests and --disable-log-requests contradict each other.")
    if args.enable_log_outputs and not args.enable_log_requests:
        raise ValueError("--enable-log-outputs needs --enable-log-requests.")
    if args.max_log_len is not None and args.max_log_len < 0:
        raise ValueError(f"--max-log-len must be at least 0, got {args.max_log_len}.")
    if args.api_server_count < 1:
        raise ValueError(f"--api-server-count must be at least 1, got {args.api_server_count}.")


# -- the app -------------------------------------------------------------------------------


def build_app(
    engine: AsyncLLM,
    args: argparse.Namespace,
    stats: PrometheusStatLogger,
    state: ServingState | None = None,
    sandbox: TemplateSandbox | None = None,
) -> FastAPI:
    """The FastAPI app over one engine. ``state`` (drain flag, requests in progress) and
    ``sandbox`` (chat-template workers) default to fresh ones; the caller closes the
    sandbox."""
    limits = ServerLimits.from_args(args)
    state = state or ServingState()
    served = list(args.served_model_name or [engine.model_config.model])
    models = ServedModels(served, engine.model_config.model, engine.model_config.max_model_len)
    sandbox = sandbox or TemplateSandbox(
        limits=RenderLimits(timeout_s=limits.chat_template_render_timeout_s)
    )
    renderer = ChatRenderer(
        engine.tokenizer,
        load_chat_template(args.chat_template),
        sandbox,
        args.trust_request_chat_template,
        args.default_chat_template_kwargs,
        engine.text_bounds,
    )
    parser = get_reasoning_parser(args.reasoning_parser) if args.reasoning_parser else None
    defaults = generation_defaults(engine.model_config.generation_config)
    tool_parser = (
        get_tool_parser(args.tool_call_parser)
        if args.enable_auto_tool_choice and args.tool_call_parser
        else None
    )
    options = ChatOptions(
        response_role=args.response_role,
        force_include_usage=args.enable_force_include_usage,
        prompt_tokens_details=args.enable_prompt_tokens_details,
        tokens_as_ids=args.return_tokens_as_token_ids,
    )
    chat = ChatHandler(
        engine, models, renderer, parser, defaults, tool_parser,
        args.exclude_tools_when_tool_choice_none, options,
    )  # fmt: skip
    completions = CompletionHandler(
        engine, models, defaults, args.enable_force_include_usage,
        args.enable_prompt_tokens_details, args.return_tokens_as_token_ids,
    )  # fmt: skip
    tokenization = TokenizationHandler(renderer, models)
    simple = GenerateHandler(engine)

    app = FastAPI(
        title="pagedllm", version=__version__, root_path=args.root_path or "",
        description="OpenAI-compatible API served by pagedllm.",
        docs_url=None, redoc_url=None,  # served offline by install_docs
        openapi_url=None if args.disable_fastapi_docs else "/openapi.json",
    )  # fmt: skip
    # No redirect from "/v1/completions/" to "/v1/completions": Starlette builds it from the
    # request's Host header (a 307 to any host, which clients follow with their body).
    app.router.redirect_slashes = False
    app.router.route_class = StrictJSONRoute
    install_error_handlers(app)
    instrument(app, stats)  # innermost: times what the handlers do, as vLLM
    install_openapi(app)
    if not args.disable_fastapi_docs:
        install_docs(app)
    if not args.disable_web_ui:
        install_web_ui(app)
    # Added innermost first: the outermost (the head's size, then CORS) sees every request
    # first.
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(
        RequestBodyMiddleware,
        max_bytes=limits.max_request_body_bytes,
        timeout_s=limits.request_body_timeout_s,
    )
    app.add_middleware(ServingStateMiddleware, state=state)
    if args.enable_request_id_headers:
        app.add_middleware(RequestIdHeaderMiddleware)
    api_keys = [key for key in (args.api_key or [envs.api_key()]) if key]
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=api_keys)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=args.allowed_origins,
        allow_methods=args.allowed_methods,
        allow_headers=args.allowed_headers,
        allow_credentials=args.allow_credentials,
    )
    app.add_middleware(HeaderSizeMiddleware)  # outermost: before any key is read

    @app.get("/health")
    @app.api_route("/ping", methods=["GET", "POST"])  # SageMaker's health check, as vLLM
    async def health() -> Response:
        if state.draining:
            return error_response("The server is shutting down.", 503)
        if engine.errored:
            return error_response("The engine is not running.", 503)
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    add_metrics_route(app, stats)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(models.list().model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request) -> Response:
        return await unless_disconnected(raw, chat.create(body)) or Response(status_code=499)

    install_messages_routes(app, chat)
    install_responses_routes(app, chat, limits)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, raw: Request) -> Response:
        return await unless_disconnected(raw, completions.create(body)) or Response(status_code=499)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> JSONResponse:
        return JSONResponse((await tokenization.tokenize(body)).model_dump(exclude_none=True))

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> JSONResponse:
        return JSONResponse((await tokenization.detokenize(body)).model_dump())

    @app.post("/generate")
    async def generate(body: GenerateRequest, raw: Request) -> Response:
        return await unless_disconnected(raw, simple.create(body)) or Response(status_code=499)

    if envs.server_dev_mode():
        add_dev_routes(app, engine)
    return app


def add_dev_routes(app: FastAPI, engine: AsyncLLM) -> None:
    """Routes that act on every client's state (PAGEDLLM_SERVER_DEV_MODE)."""

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> JSONResponse:
        reset = await engine.reset_prefix_cache()
        if not reset:
            return error_response("Requests are running; the prefix cache was not reset.", 503)
        return JSONResponse({"reset": True})


# -- running -------------------------------------------------------------------------------


def server_log_level(flag_value: str | None) -> str:
    """``--log-level`` when given, else PAGEDLLM_LOGGING_LEVEL (as the engine's own
    processes read it), else info; lower case, as uvicorn takes it."""
    return (flag_value or envs.logging_level()).lower()


def run_server(args: argparse.Namespace, connection: EngineConnection | None = None) -> int:
    """Serve until SIGTERM (exit code 0 after a clean drain). ``connection``: this is one of
    ``--api-server-count`` servers, sharing an engine core its supervisor started."""
    args.log_level = server_log_level(args.log_level)
    set_log_level(args.log_level)  # before anything logs, the engine core process included
    check_server_flags(args)
    limits = ServerLimits.from_args(args)  # checks the limits before anything loads
    engine_args = engine_args_from(args)

    # Validates every option (loads no weights); the server's batch defaults. The engine
    # process (this server's own, not a shared one's) imports meanwhile.
    usage = UsageContext.OPENAI_API_SERVER
    if connection is None:
        config, pending = start_early(engine_args, usage, args.api_server_count)
        with cancelled_on_error(pending):
            # Fail fast on a busy port, before the model loads.
            uds = getattr(args, "uds", None)
            sock = bind_unix(uds) if uds else _bind(args.host, args.port)
        if args.api_server_count > 1:
            with sock, cancelled_on_error(pending):
                return run_api_servers(args, config, sock.fileno(), pending)
    else:
        config, pending = engine_args.create_engine_config(usage), None
        sock = socket.socket(fileno=connection.listen_fd)  # the supervisor's, shared
    with cancelled_on_error(pending):  # a failure before the engine has its config
        served = args.served_model_name or [config.model_config.model]
        first = connection is None or connection.client_index == 0
        stats = PrometheusStatLogger(
            served[0], config.model_config.max_model_len, config.cache_config, engine_wide=first
        )  # engine-wide values counted once
        stats.add_process_metrics()
        # The first server of several binds the metrics port (its /metrics shows them all).
        metrics_port = args.metrics_port and first
        metrics_sock = _bind(args.host, args.metrics_port) if metrics_port else None
        engine = AsyncLLM(
            config,
            log_requests=args.enable_log_requests,
            log_outputs=args.enable_log_outputs,
            max_log_len=args.max_log_len,
            log_stats=first and not engine_args.disable_log_stats,  # one throughput line
            stat_loggers=[stats],
            max_samples=limits.max_n or config.scheduler_config.max_num_seqs,
            max_waiting_requests=limits.max_waiting_requests,
            client=connection.client() if connection is not None else None,
            pending=pending,
        )
    sandbox = TemplateSandbox(limits=RenderLimits(timeout_s=limits.chat_template_render_timeout_s))
    widen_young_generation()  # this process is the server's: a step's outputs per stream
    try:
        state = ServingState()
        app = build_app(engine, args, stats, state, sandbox)
        if first:
            _log_serving(args, served)
        server = GracefulServer(
            _uvicorn_config(app, args, limits), state, limits.shutdown_timeout_s, engine.abort_all
        )
        serving = server.serve(sockets=[sock])
        if metrics_sock is not None:
            metrics = MetricsServer(stats, args.uvicorn_log_level or args.log_level)
            serving = serve_with_metrics(serving, metrics, metrics_sock)
        run_loop(serving)
    finally:
        sandbox.close()
        engine.shutdown()
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
    return 0


def run_loop(main: Any) -> None:
    """uvloop's event loop when installed (faster I/O under load), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _log_serving(args: argparse.Namespace, served: list[str]) -> None:
    if getattr(args, "uds", None):
        logger.info(
            "Serving %s on the Unix socket %s (API docs: /docs)", ", ".join(served), args.uds
        )
        return
    scheme = "https" if args.ssl_certfile else "http"
    shown = args.host or "localhost"
    logger.info(
        "Serving %s at %s://%s:%d/v1 (API docs: /docs)", ", ".join(served), scheme, shown,
        args.port,
    )  # fmt: skip


def _uvicorn_config(app: FastAPI, args: argparse.Namespace, limits: ServerLimits) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        http=protocol_class(
            limits.request_header_timeout_s,
            limits.response_send_timeout_s,
            max_connections(limits.max_connections),
        ),
        log_level=args.uvicorn_log_level or args.log_level,
        access_log=not args.disable_uvicorn_access_log,
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs,
        ssl_ciphers=getattr(args, "ssl_ciphers", None),  # None: OpenSSL's default list
        timeout_keep_alive=5,
        log_config=getattr(args, "log_config", None) or uvicorn.config.LOGGING_CONFIG,
        timeout_graceful_shutdown=5,  # after our own drain, only idle connections remain
    )
    if args.disable_access_log_for_endpoints:  # after Config, which sets up uvicorn's logging
        import logging

        paths = {p.strip() for p in args.disable_access_log_for_endpoints.split(",") if p.strip()}
        logging.getLogger("uvicorn.access").addFilter(AccessLogFilter(paths))
    return config


def _bind(host: str | None, port: int) -> socket.socket:
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or "", port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"Cannot listen on {host or '*'}:{port}: {exc.strerror}.") from exc
    return sock


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="pagedllm's OpenAI-compatible server.")
    add_server_flags(parser)
    add_server_option_flags(parser)
    add_engine_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pagedllm.entrypoints.cli.vllm_argv import normalize_vllm_argv

    parser = make_parser("python -m pagedllm.entrypoints.openai.api_server")
    try:
        args = parser.parse_args(normalize_vllm_argv(sys.argv[1:] if argv is None else argv))
        server_options_from(args)
        return run_server(args)
    except ValueError as exc:
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
