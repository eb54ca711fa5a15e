"""The convserve HTTP service; build it with create_app()."""

from __future__ import annotations

import warnings

from flask import Flask
from PIL import Image

from service.config import Settings


def create_app(settings: Settings | None = None, *, start_engine: bool = True) -> Flask:
    """Builds the Flask app: config, logging, error handlers, hooks, routes and the engine.

    The engine loads and warms the model before this returns (in each gunicorn worker, after
    the fork), then watches the checkpoint for new versions in a background thread.
    """
    # Imported here, not at module top: gunicorn's master imports this package for its config
    # and must not pay for torch; each worker imports it when it builds the app.
    from service.api import api
    from service.engine import Engine
    from service.errors import register_error_handlers
    from service.explain import init_explain
    from service.hooks import init_request_hooks
    from service.logs import configure_logging
    from service.openapi import build_openapi
    from service.page import page

    settings = settings or Settings()
    configure_logging(settings)
    # Pillow's own decompression-bomb guard follows our limit (it is process-wide). Its
    # warning for images just over the limit is noise: service.imaging refuses them with 413.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    engine = Engine(settings)
    app.extensions["convserve.settings"] = settings
    app.extensions["convserve.engine"] = engine
    app.extensions["convserve.openapi"] = build_openapi(settings)
    register_error_handlers(app)
    init_request_hooks(app, settings)
    app.register_blueprint(api)
    app.register_blueprint(page)
    init_explain(app, settings)
    if start_engine:
        engine.start()
    return app
