"""The convserve HTTP service; build it with create_app()."""

from __future__ import annotations

from flask import Flask

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
    from service.fast_predict import FastPredict
    from service.hooks import init_request_hooks
    from service.imaging import configure_decoders
    from service.logs import configure_logging
    from service.openapi import build_openapi
    from service.page import page
    from service.torchserve import register_torchserve
    from service.v2 import register_v2

    settings = settings or Settings()
    configure_logging(settings)
    configure_decoders(settings.max_image_pixels)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    engine = Engine(settings)
    app.extensions["convserve.settings"] = settings
    app.extensions["convserve.engine"] = engine
    app.extensions["convserve.openapi"] = build_openapi(settings)
    register_error_handlers(app)
    init_request_hooks(app, settings)
    app.register_blueprint(api)
    register_v2(app)
    register_torchserve(app)
    app.register_blueprint(page)
    init_explain(app, settings)
    # Flask's middleware pattern: the same app object, its wsgi_app wrapped.
    app.wsgi_app = FastPredict(app.wsgi_app, engine, settings)  # type: ignore[method-assign]
    if start_engine:
        engine.start()
    return app
