"""The OpenAPI document, as the server answers: errors are OpenAI-shaped 4xx/5xx bodies.

FastAPI documents a 422 validation error for every route with a body; this server answers
bad input with 400 and an ``ErrorResponse``, and may also answer 401 (API key), 404
(unknown model), 408 (slow body), 413 (large body), 415 (a body compressed or not JSON),
500 (a request the engine failed) and 503 (overloaded, draining, engine down). Each
operation documents exactly those, in the shape its API speaks (Anthropic's under
/v1/messages).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pagedllm.entrypoints.openai.errors import MESSAGES_PATH
from pagedllm.entrypoints.openai.messages_protocol import AnthropicErrorResponse
from pagedllm.entrypoints.openai.protocol import ErrorResponse

ERROR_STATUSES = {
    400: "Invalid request",
    401: "Missing or invalid API key",
    404: "Unknown model or route",
    408: "The request body arrived too slowly",
    413: "The request body is too large",
    415: "The request body is compressed or not JSON (Content-Encoding, Content-Type)",
    500: "The engine failed this request",
    503: "Overloaded, shutting down, or the engine is not running",
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_ANTHROPIC_ERROR_REF = {"$ref": "#/components/schemas/AnthropicErrorResponse"}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for model in (ErrorResponse, AnthropicErrorResponse):
        error_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components[model.__name__] = error_schema
    for path, operations in schema.get("paths", {}).items():
        anthropic = path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")
        ref = _ANTHROPIC_ERROR_REF if anthropic else _ERROR_REF
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in ERROR_STATUSES.items():
                responses[str(status)] = {
                    "description": description,
                    "content": {"application/json": {"schema": ref}},
                }
    return schema
