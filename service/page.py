"""GET /: the page that shows what the CNN sees, served from the package's static files.

Everything the page needs (HTML, CSS, JavaScript, sample images) lives in service/static/ and
is served by Flask's static route, so the page works offline and inside the Docker image.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

page = Blueprint("page", __name__)

# The page and its files: scripts and styles from this origin only, images also as data:
# URLs (the maps /v1/explain returns); nothing inline, no framing, no other origin.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Everything else is data, never a document to render.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


@page.get("/")
def index() -> Response:
    """The page (static/index.html)."""
    return current_app.send_static_file("index.html")


def content_security_policy(path: str) -> str:
    """The Content-Security-Policy for a response to `path`."""
    return PAGE_POLICY if path == "/" or path.startswith("/static/") else API_POLICY
