"""The framework-free predictor: loads the checkpoint, warms it up, batches, predicts, reloads.

One Engine lives in each gunicorn worker, created after fork. The first load happens before
the worker accepts connections; a thread then watches the checkpoint file and swaps in each new
version whole, so no request ever meets a half-loaded model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError, checkpoint_version, load_checkpoint
from models.cnn import ModelSummary
from service import heap, metrics
from service.batching import Batcher, Overloaded, Ticket
from service.config import Settings

log = logging.getLogger("convserve.engine")

# Seconds between two returns of the heap's free pages to the system (see service/heap.py).
HEAP_TRIM_INTERVAL_S = 1.0

__all__ = [
    "Engine",
    "LoadedModel",
    "NotReady",
    "Overloaded",
    "PendingPrediction",
    "PredictionBatch",
]


class NotReady(Exception):
    """No model is loaded (yet), or the forward pass did not finish in time."""


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint turned into a ready-to-run module; immutable, swapped whole on reload.

    `module` holds its weights in channels_last layout (see `prepare_module`); `scale` and
    `shift` fold the checkpoint's 0-255 -> 0-1 -> mean/std normalization into one multiply-add.
    """

    checkpoint: Checkpoint
    module: nn.Module
    name: str
    version: str
    summary: ModelSummary
    file_signature: tuple[int, int, int]
    scale: torch.Tensor
    shift: torch.Tensor

    @property
    def classes(self) -> list[str]:
        """Class names in output-index order."""
        return self.checkpoint.classes


@dataclass(frozen=True)
class PendingPrediction:
    """Images queued for a forward pass; result() waits for their probabilities."""

    model: LoadedModel
    ticket: Ticket[LoadedModel]
    timeout_s: float

    def result(self) -> PredictionBatch:
        """Blocks until every chunk ran (in this thread when no other runs a batch).

        Raises NotReady after the request timeout.
        """
        try:
            results = self.ticket.result(self.timeout_s)
        except TimeoutError as exc:
            raise NotReady("the forward pass did not finish within the request timeout") from exc
        probabilities = [row for r in results for row in r.outputs.tolist()]
        return PredictionBatch(
            model=self.model,
            probabilities=probabilities,
            queue_s=max(r.queue_s for r in results),
            inference_s=sum(r.inference_s for r in results),
        )


@dataclass(frozen=True)
class PredictionBatch:
    """Class probabilities for the images of one request, and the timings that made them."""

    model: LoadedModel
    probabilities: list[list[float]]
    queue_s: float
    inference_s: float


class Engine:
    """Owns the model of one worker process and the batcher that feeds it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model: LoadedModel | None = None
        self._load_error: str | None = "the model is loading"
        self._failed_signature: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._batcher: Batcher[LoadedModel] = Batcher(
            self.forward,
            settings.max_batch_size,
            settings.max_batch_delay_s,
            settings.max_queue_images,
            on_batch=_record_batch,
        )
        self._housekeeper: threading.Thread | None = None

    @property
    def model(self) -> LoadedModel | None:
        """The model serving now, or None before the first successful load."""
        return self._model

    @property
    def ready(self) -> bool:
        """True once a model is loaded and warmed up."""
        return self._model is not None

    @property
    def load_error(self) -> str | None:
        """Why no model serves yet (None once one does)."""
        return None if self._model is not None else self._load_error

    def start(self) -> None:
        """Sets the thread and heap budget, loads the model and starts the housekeeping thread.

        The first load runs before start() returns, so a gunicorn worker accepts connections
        only once its model is warm; when it fails (no file yet, a bad file), the worker still
        serves /healthz and a 503 /readyz while the housekeeping thread keeps trying.
        """
        torch.set_num_threads(self.settings.torch_threads)
        heap.use_single_arena()
        if self.settings.precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            log.warning("CONVSERVE_PRECISION=bf16 on a CPU without native bf16: expect it slower")
        with contextlib.suppress(RuntimeError):  # allowed once per process, before any work
            torch.set_num_interop_threads(1)
        self.reload()
        if self._housekeeper is None:
            self._housekeeper = threading.Thread(
                target=self._housekeep, name="housekeeping", daemon=True
            )
            self._housekeeper.start()

    def stop(self) -> None:
        """Stops the housekeeping thread (requests in flight run their own forward passes)."""
        self._stop.set()

    def reload(self) -> bool:
        """Loads the checkpoint when its file changed since the last attempt.

        Returns True when a new model now serves. A checkpoint that fails to load leaves the
        current model serving; the failure is logged and counted, and not retried until the
        file changes again.
        """
        path = self.settings.model_path
        with self._lock:
            try:
                signature = _file_signature(path)
            except OSError:
                self._load_error = f"no checkpoint at {path}"
                return False
            current = self._model
            if signature in (self._failed_signature, current and current.file_signature):
                return False
            try:
                loaded = self._load(path, signature)
            except (CheckpointError, OSError, RuntimeError) as exc:
                self._failed_signature = signature
                self._load_error = str(exc)
                metrics.RELOADS.labels("failed").inc()
                log.error("checkpoint rejected, keeping the current model: %s", exc)
                return False
            self._model = loaded
            self._failed_signature = None
            metrics.RELOADS.labels("loaded").inc()
            if current is not None:
                metrics.MODEL_INFO.labels(current.name, current.version).set(0)
            metrics.MODEL_INFO.labels(loaded.name, loaded.version).set(1)
            log.info(
                "serving model %s version %s (%d parameters)",
                loaded.name,
                loaded.version,
                loaded.summary.parameters,
            )
            return True

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Wraps a request that is about to submit images, so a forming batch waits for it."""
        with self._batcher.expect():
            yield

    def submit(self, model: LoadedModel, pixels: torch.Tensor) -> PendingPrediction:
        """Queues (N, C, H, W) uint8 pixels prepared for `model`; raises Overloaded when full."""
        ticket = self._batcher.submit(model, pixels)
        return PendingPrediction(model, ticket, self.settings.request_timeout_s)

    def forward(self, model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 pixels -> (N, classes) float32 probabilities, one forward pass.

        Equal within float tolerance to softmax(model(preprocessing.normalize(pixels))) on the
        checkpoint's plain eager model (tests/service/test_engine.py proves it).
        """
        with torch.inference_mode():
            # One copy converts to float and to channels_last (NHWC in memory), the layout the
            # oneDNN kernels want; the in-place multiply-add keeps it.
            inputs = pixels.to(torch.float32, memory_format=torch.channels_last)
            inputs.mul_(model.scale).add_(model.shift)
            with self._autocast():
                logits = model.module(inputs)
            return torch.softmax(logits.float(), dim=1)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.settings.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _load(self, path: Path, signature: tuple[int, int, int]) -> LoadedModel:
        started = time.perf_counter()
        version = checkpoint_version(path)
        checkpoint = load_checkpoint(path)
        module = checkpoint.build_model()
        summary = module.summary()
        scale, shift = normalization_constants(checkpoint)
        name = str(checkpoint.training.get("name") or path.stem)
        loaded = LoadedModel(
            checkpoint, prepare_module(module), name, version, summary, signature, scale, shift
        )
        self._warm_up(loaded)
        log.info("loaded %s in %.2fs", path, time.perf_counter() - started)
        return loaded

    def _warm_up(self, model: LoadedModel) -> None:
        """Runs every batch size once, largest first, so no request pays for a first pass.

        oneDNN builds (JIT-compiles) its kernels per input shape on first use; warming each
        size up front keeps that cost, and the memory it holds, out of the serving time.
        """
        shape = model.checkpoint.config.input_shape
        for size in range(self.settings.max_batch_size, 0, -1):
            self.forward(model, torch.zeros((size, *shape), dtype=torch.uint8))

    def _housekeep(self) -> None:
        """Checks the checkpoint every reload_interval_s and trims the heap every second.

        With reload_interval_s = 0 the checkpoint is only checked until a model serves.
        """
        interval = self.settings.reload_interval_s
        next_check = time.monotonic()
        next_trim = next_check + HEAP_TRIM_INTERVAL_S
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_check:
                if interval > 0 or self._model is None:
                    try:
                        self.reload()
                    except Exception:
                        log.exception("model reload check failed")
                next_check = now + (interval if interval > 0 else 1.0)
            if now >= next_trim:
                heap.trim()
                next_trim = now + HEAP_TRIM_INTERVAL_S
            self._stop.wait(max(0.0, min(next_check, next_trim) - time.monotonic()))


def prepare_module(module: nn.Module) -> nn.Module:
    """The eval-mode module with its weights in channels_last layout, ready to serve.

    With NCHW weights eager CPU max-pooling falls back to a slow scalar kernel; channels_last
    keeps every layer on the vectorized oneDNN/NHWC kernels (3x faster, see bench/results.md).
    """
    return module.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def normalization_constants(checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C, 1, 1): (x / 255 - mean) / std == x * scale + shift."""
    pre = checkpoint.preprocessing
    mean = torch.tensor(pre.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float64).view(-1, 1, 1)
    return (1.0 / (255.0 * std)).float(), (-mean / std).float()


def _record_batch(size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(size)
    metrics.INFERENCE_DURATION.observe(seconds)


def _file_signature(path: Path) -> tuple[int, int, int]:
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
