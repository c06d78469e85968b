"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can cause is turned into one of these with a 4xx status and a
sentence that names what was wrong; the engine keeps serving everyone else. Anthropic's
Messages API (``/v1/messages*``) answers the same failures in Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}``, since its clients parse only that.
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.engine.async_llm import EngineDeadError, EngineOverloadedError, RequestFailedError
from pagedllm.entrypoints.openai.messages_protocol import (
    AnthropicErrorInfo,
    AnthropicErrorResponse,
)
from pagedllm.entrypoints.openai.protocol import (
    ErrorInfo,
    ErrorResponse,
    FieldError,
    UnsupportedField,
)
from pagedllm.logger import init_logger

logger = init_logger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
# Anthropic's error types by status (its clients pick exception classes by status; the type
# is for people reading the body).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}
MESSAGES_PATH = "/v1/messages"
# Seconds a client told the server is overloaded should wait before retrying.
RETRY_AFTER_S = 1
# A ValueError that starts with a field name ("top_p must be in (0, 1], got 2.") names it.
_LEADING_FIELD = re.compile(r"^(?:SamplingParams\.)?([a-z_]+) (?:must|is|cannot|are|requires)\b")
# The characters of an error message a client gets back, at most: its head (which names the
# field) and its tail (which says what to send instead) are kept. Messages quote the values
# they refuse, and a value is the client's own: a model name, an item or part type, an
# include, a guided_decoding_backend or a grammar rule of 1 MB came back whole, in every 400.
MAX_ERROR_CHARS = 1024
_ERROR_TAIL_CHARS = 256
# The characters of an error's ``param`` at most: a field path, which holds the client's own
# keys where a field is a mapping (``logit_bias.<key>``, ``metadata.<key>``).
MAX_ERROR_PARAM_CHARS = 256


def bounded_message(message: str) -> str:
    """``message`` unless longer than ``MAX_ERROR_CHARS``: then its head and tail, with the
    number of characters cut between them."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    cut = len(message) - MAX_ERROR_CHARS
    head = MAX_ERROR_CHARS - _ERROR_TAIL_CHARS
    return f"{message[:head]}...({cut} characters cut)...{message[-_ERROR_TAIL_CHARS:]}"


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        message = bounded_message(message)
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


def error_body(message: str, status: int, param: str | None = None) -> dict:
    message = bounded_message(message)
    if param is not None and len(param) > MAX_ERROR_PARAM_CHARS:
        param = f"{param[:MAX_ERROR_PARAM_CHARS]}..."
    info = ErrorInfo(message=message, type=_TYPES.get(status, "Error"), param=param, code=status)
    return ErrorResponse(error=info).model_dump()


def error_response(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


def anthropic_error_body(message: str, status: int) -> dict:
    kind = _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    error = AnthropicErrorInfo(type=kind, message=bounded_message(message))
    return AnthropicErrorResponse(error=error).model_dump()


def route_path(scope: dict) -> str:
    """The request's path below ``root_path`` (behind a path-routing proxy)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def error_body_for(scope: dict, message: str, status: int, param: str | None = None) -> dict:
    """The error in the shape the request's API speaks: Anthropic's under /v1/messages."""
    path = route_path(scope)
    if path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/"):
        return anthropic_error_body(message, status)
    return error_body(message, status, param)


def _error_response_for(
    request: Request, message: str, status: int, param: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body_for(request.scope, message, status, param), status_code=status)


def from_value_error(exc: ValueError) -> OpenAIError:
    """A user-facing ValueError from validation, as a 400 naming the field when it can."""
    if isinstance(exc, (UnsupportedField, FieldError)):
        return OpenAIError(str(exc), 400, exc.field)
    match = _LEADING_FIELD.match(str(exc))
    return OpenAIError(str(exc), 400, match.group(1) if match else None)


def from_engine_error(exc: BaseException) -> OpenAIError | None:
    """The engine's own refusals and failures as HTTP errors (None for anything else)."""
    if isinstance(exc, ValueError):
        return from_value_error(exc)
    if isinstance(exc, RequestFailedError):
        return OpenAIError(f"The engine could not complete this request: {exc}", 500)
    if isinstance(exc, EngineOverloadedError):
        return OpenAIError(str(exc), 503)
    if isinstance(exc, EngineDeadError):
        return OpenAIError("The engine is not running.", 503)
    return None


def sse_error(exc: BaseException) -> str:
    """An error inside an already started stream, as one server-sent event. Only this
    request's own error is told; anything unexpected is logged, not echoed."""
    err = from_engine_error(exc)
    if err is None:
        logger.error("Stream ended by an unexpected error", exc_info=exc)
        err = OpenAIError("Internal server error (see the server log).", 500)
    return f"data: {json.dumps(error_body(err.message, err.status, err.param))}\n\n"


def install_error_handlers(app: FastAPI) -> None:
    """Unhandled exceptions are left to ``ErrorMiddleware`` (one log line, one 500)."""

    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError) -> JSONResponse:
        return _error_response_for(request, exc.message, exc.status, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return _error_response_for(request, message, 400, param)

    for kind in (ValueError, RequestFailedError, EngineOverloadedError, EngineDeadError):

        @app.exception_handler(kind)
        async def _engine(request: Request, exc: Exception) -> JSONResponse:
            err = from_engine_error(exc)
            assert err is not None
            headers = {"Retry-After": str(RETRY_AFTER_S)} if err.status == 503 else None
            response = _error_response_for(request, err.message, err.status, err.param)
            response.headers.update(headers or {})
            return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error_response_for(request, str(exc.detail), exc.status_code)
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    kind = first.get("type", "")
    where = [str(p) for p in first.get("loc", ())]
    # A query parameter is named as OpenAI names it ("limit"), as a body field is: the
    # source is dropped, only in front (a body field may itself be called "query").
    where = where[1:] if where[:1] == ["query"] else where
    location = [p for p in where if p != "body"]
    param = ".".join(location) or None
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return f"Malformed JSON in the request body: {detail}.", None
    if kind == "missing" and param is None:
        return "The request body is empty: send a JSON object.", None
    if kind == "missing":
        return f"Missing required field '{param}'.", param
    message = str(first.get("msg", "Invalid value"))
    message = message.removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param
