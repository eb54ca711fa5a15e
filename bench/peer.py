"""The tuned peer of issue 5, measured in the same run: a tutorial-grade Flask app.

What a hand-written service looks like: gunicorn with sync workers (one per core, one request
at a time each, no keep-alive), one torch thread per process (the "tuned" setting), the plain
eager model from the same checkpoint, Pillow's full decode and resize, `torch.no_grad()`,
`jsonify`. No batching, no validation, no metrics, no logging. Started by bench.run as
`gunicorn -w <cores> -k sync 'bench.peer:create_app("<checkpoint>")'`.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from flask import Flask, Response, jsonify, request
from PIL import Image

from models.checkpoint import load_checkpoint

PREDICT_PATH = "/predict"


def create_app(checkpoint_path: str) -> Flask:
    """The peer app serving the checkpoint at `checkpoint_path` on POST /predict (raw body)."""
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model().eval()
    pre = checkpoint.preprocessing
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    app = Flask(__name__)

    @app.post(PREDICT_PATH)
    def predict() -> Response:
        image = Image.open(io.BytesIO(request.get_data())).convert(pre.mode)
        image = image.resize((pre.width, pre.height))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        pixels = pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        with torch.no_grad():
            scores = torch.softmax(model(((pixels - mean) / std).unsqueeze(0)), dim=1)[0]
        return jsonify({name: float(s) for name, s in zip(checkpoint.classes, scores, strict=True)})

    @app.get("/readyz")  # what bench.server.Server waits for
    def ready() -> Response:
        return jsonify({"status": "ready"})

    return app
