"""The API docs pages, ``/docs`` (Swagger UI) and ``/redoc``, working without internet.

FastAPI's default pages load their scripts from a CDN, so behind a firewall they are blank.
Here the pages load them from this server: the files the ``fastapi-offline`` package
installs (Swagger UI's bundle and stylesheet, ReDoc's standalone script, a favicon), each
served at a fixed path (``ASSETS``), so no request names a file. Like the pages, the assets
need no API key (they are in the middleware's ``OPEN_PATHS``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {
    "/docs/swagger-ui-bundle.js": "swagger-ui-bundle.js",
    "/docs/swagger-ui.css": "swagger-ui.css",
    "/docs/redoc.standalone.js": "redoc.standalone.js",
    "/docs/favicon.png": "favicon.png",
}
DOC_PAGES = ("/docs", "/docs/oauth2-redirect", "/redoc")


def assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Routes for the two pages and their assets; the app must be built with
    ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not also registered."""
    folder = assets_dir()
    for path, name in ASSETS.items():
        _add_asset(app, path, folder / name)

    def url(path: str) -> str:
        return app.root_path + path  # behind a path-routing proxy (--root-path)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url("/openapi.json"),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=url("/docs/oauth2-redirect"),
            swagger_js_url=url("/docs/swagger-ui-bundle.js"),
            swagger_css_url=url("/docs/swagger-ui.css"),
            swagger_favicon_url=url("/docs/favicon.png"),
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url("/openapi.json"),
            title=f"{app.title} - ReDoc",
            redoc_js_url=url("/docs/redoc.standalone.js"),
            redoc_favicon_url=url("/docs/favicon.png"),
            with_google_fonts=False,  # no request leaves for fonts either
        )


def _add_asset(app: FastAPI, path: str, file: Path) -> None:
    async def asset() -> FileResponse:
        return FileResponse(file)

    app.add_api_route(path, asset, methods=["GET"], include_in_schema=False)
