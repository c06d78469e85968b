"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can cause is turned into one of these with a 4xx status and a
sentence that names what was wrong; the engine keeps serving everyone else.
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse, UnsupportedField
from pagedllm.logger import init_logger

logger = init_logger(__name__)

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
# A ValueError that starts with a field name ("top_p must be in (0, 1], got 2.") names it.
_LEADING_FIELD = re.compile(r"^(?:SamplingParams\.)?([a-z_]+) (?:must|is|cannot|are|requires)\b")


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


def error_body(message: str, status: int, param: str | None = None) -> dict:
    info = ErrorInfo(message=message, type=_TYPES.get(status, "Error"), param=param, code=status)
    return ErrorResponse(error=info).model_dump()


def error_response(message: str, status: int, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


def from_value_error(exc: ValueError) -> OpenAIError:
    """A user-facing ValueError from validation, as a 400 naming the field when it can."""
    if isinstance(exc, UnsupportedField):
        return OpenAIError(str(exc), 400, exc.field)
    match = _LEADING_FIELD.match(str(exc))
    return OpenAIError(str(exc), 400, match.group(1) if match else None)


def sse_error(exc: BaseException) -> str:
    """An error inside an already started stream, as one server-sent event."""
    if isinstance(exc, ValueError):
        err = from_value_error(exc)
        return f"data: {json.dumps(error_body(err.message, err.status, err.param))}\n\n"
    return f"data: {json.dumps(error_body(str(exc) or type(exc).__name__, 500))}\n\n"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc.message, exc.status, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return error_response(message, 400, param)

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        err = from_value_error(exc)
        return error_response(err.message, err.status, err.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error while serving a request")
        return error_response(f"Internal error: {type(exc).__name__}: {exc}", 500)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    kind = first.get("type", "")
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    if kind == "json_invalid":
        return f"Malformed JSON in the request body: {first.get('msg', '')}.", None
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if kind == "missing":
        return f"Missing required field '{param}'.", param
    message = str(first.get("msg", "Invalid value"))
    message = message.removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param
