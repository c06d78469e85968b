"""HTTP metrics (prometheus-fastapi-instrumentator, as vLLM: ``http_requests_total``,
``http_request_duration_seconds``, ...) and the ``/metrics`` endpoint, on the API's app and
on its own port (``--metrics-port``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Iterator

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_fastapi_instrumentator import Instrumentator

from pagedllm.metrics.prometheus import PrometheusStatLogger

# vLLM's list: probes and scrapes would drown the traffic that matters.
EXCLUDED_HANDLERS = ["/metrics", "/health", "/load", "/ping", "/version", "/server_info"]


def instrument(app: FastAPI, stats: PrometheusStatLogger) -> None:
    """Count and time every request to ``app`` into ``stats``' registry."""
    Instrumentator(excluded_handlers=EXCLUDED_HANDLERS, registry=stats.registry).instrument(app)


def add_metrics_route(app: FastAPI, stats: PrometheusStatLogger) -> None:
    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(stats.exposition(), media_type=CONTENT_TYPE_LATEST)


def metrics_app(stats: PrometheusStatLogger) -> FastAPI:
    """The app of ``--metrics-port``: ``/metrics`` alone."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_metrics_route(app, stats)
    return app


class MetricsServer(uvicorn.Server):
    """Serves ``metrics_app`` beside the API server, in its event loop. It leaves the
    signals to the API server (whose drain ends both: see ``serve_with_metrics``)."""

    def __init__(self, stats: PrometheusStatLogger, log_level: str) -> None:
        super().__init__(uvicorn.Config(metrics_app(stats), log_level=log_level, access_log=False))

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_with_metrics(
    main: Awaitable[None], metrics: MetricsServer, metrics_socket: socket.socket
) -> None:
    """Run the API server (``main``) and the metrics server until the API server stops."""
    task = asyncio.ensure_future(metrics.serve(sockets=[metrics_socket]))
    try:
        await main
    finally:
        metrics.should_exit = True
        await task
