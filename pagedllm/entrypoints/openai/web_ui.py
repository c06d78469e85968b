"""The chat page at ``GET /`` (``--disable-web-ui`` turns it off): plain HTML, CSS and ES
modules shipped in ``static/`` (package data), served from fixed paths so no request names
a file. The page and its files need no API key (in the middleware's ``OPEN_PATHS``); the
page asks for the key itself and sends it with its API calls.

The Content-Security-Policy is the second wall against script injection (the first: the
page never turns model text or model names into HTML): scripts only from this server, no
inline script, no plugins, and fetches only to this server.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

PAGE = "/"
FILES = {
    PAGE: ("index.html", "text/html; charset=utf-8"),
    "/ui/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/ui/markdown.js": ("markdown.js", "text/javascript; charset=utf-8"),
    "/ui/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new version shows after a restart
}


def static_dir() -> Path:
    return Path(str(resources.files("pagedllm.entrypoints.openai") / "static"))


def install_web_ui(app: FastAPI) -> None:
    folder = static_dir()
    for path, (name, media_type) in FILES.items():
        _add_file(app, path, folder / name, media_type)


def _add_file(app: FastAPI, path: str, file: Path, media_type: str) -> None:
    async def serve() -> FileResponse:
        return FileResponse(file, media_type=media_type, headers=HEADERS)

    app.add_api_route(path, serve, methods=["GET"], include_in_schema=False)
