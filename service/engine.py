"""The framework-free predictor: loads checkpoints, warms them up, batches, predicts, reloads.

One Engine lives in each gunicorn worker, created after fork. It serves one checkpoint
(`model_path`, under `model_name` or its file stem) or every checkpoint of a folder
(`model_dir`), each under its file stem, as a `ServedModel` with its own batcher. The first
load happens before the worker accepts connections; a thread then watches the files and swaps
in each new version whole, so no request ever meets a half-loaded model.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from service import heap, metrics
from service.batch_plan import BatchingPlan, plan_batching
from service.batching import Batcher, Overloaded
from service.config import MODEL_NAME_PATTERN, Settings
from service.loading import LoadedModel, file_signature, load_model

log = logging.getLogger("convserve.engine")

# Seconds between two returns of the heap's free pages to the system (see service/heap.py).
HEAP_TRIM_INTERVAL_S = 1.0

MODEL_NAME = re.compile(MODEL_NAME_PATTERN)

__all__ = [
    "Engine",
    "Inference",
    "LoadedModel",
    "ModelUnavailable",
    "Overloaded",
    "Prepare",
    "ServedModel",
]


class ModelUnavailable(Exception):
    """The model has no version loaded: none yet, or its only file was refused."""


@dataclass(frozen=True)
class Inference:
    """One request's class probabilities, (N, classes), and the version and timings behind them."""

    model: LoadedModel
    probabilities: torch.Tensor
    decode_s: float
    queue_s: float
    inference_s: float


Forward = Callable[[LoadedModel, torch.Tensor], torch.Tensor]
Prepare = Callable[[LoadedModel], torch.Tensor]


class ServedModel:
    """One model name: the file it comes from, the version serving now and its own batcher."""

    def __init__(self, name: str, path: Path, settings: Settings, forward: Forward) -> None:
        self.name = name
        self.path = path
        self._settings = settings
        self._forward = forward
        self._current: LoadedModel | None = None
        self._load_error: str | None = "the model is loading"
        self._failed_signature: tuple[int, int, int] | None = None
        self._batcher: Batcher[LoadedModel] = Batcher(
            forward,
            settings.max_batch_size,
            settings.max_batch_delay_s,
            settings.max_queue_images,
            on_batch=lambda size, seconds: _record_batch(name, size, seconds),
        )

    @property
    def current(self) -> LoadedModel | None:
        """The version serving now, or None before the first successful load."""
        return self._current

    @property
    def load_error(self) -> str | None:
        """Why no version serves (None once one does)."""
        return None if self._current is not None else self._load_error

    def reload(self) -> bool:
        """Loads the file when it changed since the last attempt; True when a new version serves.

        A file that fails to load leaves the current version serving; the failure is logged and
        counted, and not retried until the file changes again.
        """
        try:
            signature = file_signature(self.path)
        except OSError:
            self._load_error = f"no checkpoint at {self.path}"
            return False
        current = self._current
        if signature in (self._failed_signature, current and current.file_signature):
            return False
        try:
            loaded = load_model(self.path, self.name, signature)
            plan = self._warm_up(loaded)
            loaded = replace(loaded, batching=plan)
        except Exception as exc:  # a refused file must never take the serving version down
            self._failed_signature = signature
            self._load_error = str(exc)
            metrics.RELOADS.labels("failed").inc()
            log.error("checkpoint rejected, keeping the current model: %s", exc)
            return False
        self._current = loaded
        self._batcher.max_batch_size = plan.max_batch_size
        self._failed_signature = None
        metrics.RELOADS.labels("loaded").inc()
        if current is not None:
            metrics.MODEL_INFO.labels(current.name, current.version).set(0)
        metrics.MODEL_INFO.labels(loaded.name, loaded.version).set(1)
        log.info(
            "serving model %s version %s (%d parameters); %s",
            loaded.name,
            loaded.version,
            loaded.summary.parameters,
            plan.reason,
        )
        return True

    def unload(self) -> None:
        """Stops advertising this model (its file is gone); requests holding it still finish."""
        current, self._current = self._current, None
        self._load_error = f"no checkpoint at {self.path}"
        if current is not None:
            metrics.MODEL_INFO.labels(current.name, current.version).set(0)
            log.info("unloaded model %s (its file was removed)", self.name)

    def infer(self, prepare: Prepare) -> Inference:
        """Runs `prepare(model)` for the version serving now, then its pixels through the model.

        `prepare` decodes or converts the request's input into (N, C, H, W) pixels for that
        version (uint8 0-255, or float32 on the same scale); every row of the answer comes from
        that version. Raises ModelUnavailable before one is loaded, Overloaded when the queue is
        full and TimeoutError when no forward pass ran within the request timeout.
        """
        model = self._current
        if model is None:
            raise ModelUnavailable(f"model {self.name!r} is not loaded: {self._load_error}")
        decode_s = 0.0

        def timed_prepare() -> torch.Tensor:
            nonlocal decode_s
            started = time.perf_counter()
            pixels = prepare(model)
            decode_s = time.perf_counter() - started
            return pixels

        results = self._batcher.run(model, timed_prepare, self._settings.request_timeout_s)
        return Inference(
            model=model,
            probabilities=(
                results[0].outputs if len(results) == 1 else torch.cat([r.outputs for r in results])
            ),
            decode_s=decode_s,
            queue_s=max(r.queue_s for r in results),
            inference_s=sum(r.inference_s for r in results),
        )

    def _warm_up(self, model: LoadedModel) -> BatchingPlan:
        """Runs every batch size once, largest first, so no request pays for a first pass;
        then times the model to choose whether batching pays for it (service.batch_plan).

        oneDNN builds (JIT-compiles) its kernels per input shape on first use; warming each
        size up front keeps that cost, and the memory it holds, out of the serving time.
        """
        shape = model.checkpoint.config.input_shape

        def forward(size: int) -> torch.Tensor:
            return self._forward(model, torch.zeros((size, *shape), dtype=torch.uint8))

        for size in range(self._settings.max_batch_size, 0, -1):
            forward(size)
        limit_was_set = "max_batch_size" in self._settings.model_fields_set
        return plan_batching(forward, self._settings.max_batch_size, limit_was_set)


class Engine:
    """Owns the models of one worker process: finds their files, loads, reloads and runs them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[str, ServedModel] = {}
        self._default_name: str | None = None
        self._scan_error: str | None = "the model is loading"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._housekeeper: threading.Thread | None = None

    @property
    def models(self) -> dict[str, ServedModel]:
        """Every model found, by name (a snapshot: reloads replace the dict, never mutate it)."""
        return self._models

    def get(self, name: str) -> ServedModel | None:
        """The model served under `name`, or None."""
        return self._models.get(name)

    @property
    def default(self) -> ServedModel | None:
        """The model /v1/predict and /v1/model serve."""
        return self._models.get(self._default_name) if self._default_name else None

    @property
    def model(self) -> LoadedModel | None:
        """The default model's serving version, or None before one is loaded."""
        default = self.default
        return default.current if default is not None else None

    @property
    def ready(self) -> bool:
        """True once the default model is loaded and warmed up."""
        return self.model is not None

    @property
    def load_error(self) -> str | None:
        """Why the default model does not serve (None once it does)."""
        default = self.default
        if default is not None:
            return default.load_error
        wanted = self.settings.default_model
        if wanted is not None and wanted not in self._models and self._models:
            return (
                f"CONVSERVE_DEFAULT_MODEL {wanted!r} is none of {', '.join(sorted(self._models))}"
            )
        return self._scan_error

    def start(self) -> None:
        """Sets the thread and heap budget, loads the models and starts the housekeeping thread.

        The first load runs before start() returns, so a gunicorn worker accepts connections
        only once its models are warm; when the default one fails (no file yet, a bad file),
        the worker still serves /healthz and a 503 /readyz while housekeeping keeps trying.
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
        """Looks for new, changed and removed checkpoint files; True when a new version serves."""
        with self._lock:
            found = self._find_files()
            models = dict(self._models)
            changed = False
            for name, path in found.items():
                served = models.get(name)
                if served is None:
                    served = models[name] = ServedModel(name, path, self.settings, self.forward)
                changed |= served.reload()
            if self.settings.model_dir is not None:
                for name in set(models) - set(found):
                    models.pop(name).unload()
            self._default_name = self._pick_default(models)
            self._models = models
            return changed

    def forward(self, model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels on the 0-255 scale -> (N, classes) float32 probabilities.

        Equal within float tolerance to softmax(model(preprocessing.normalize(pixels))) on the
        checkpoint's plain eager model (tests/service/test_engine.py proves it).
        """
        with torch.inference_mode():
            # One copy converts to float and to channels_last (NHWC in memory), the layout the
            # oneDNN kernels want; the in-place multiply-add keeps it.
            inputs = pixels.to(torch.float32, memory_format=torch.channels_last, copy=True)
            inputs.mul_(model.scale).add_(model.shift)
            with self._autocast():
                logits = model.module(inputs)
            return torch.softmax(logits.float(), dim=1)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.settings.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _find_files(self) -> dict[str, Path]:
        """Served name -> checkpoint file: the one model_path, or each checkpoint of model_dir."""
        directory = self.settings.model_dir
        if directory is None:
            path = self.settings.model_path
            return {self._single_name: path}
        try:
            candidates = sorted(directory.glob("*.pt"))
        except OSError as exc:
            self._scan_error = f"cannot list {directory}: {exc}"
            return {}
        found: dict[str, Path] = {}
        for path in candidates:
            # Hidden files are in-progress copies; *.state.pt is convserve-train's resume state.
            if path.name.startswith(".") or path.name.endswith(".state.pt"):
                continue
            if not MODEL_NAME.match(path.stem):
                log.warning("skipping %s: its name is not a valid model name", path)
                continue
            found[path.stem] = path
        self._scan_error = f"no checkpoint in {directory}" if not found else None
        return found

    @property
    def _single_name(self) -> str:
        """The name the one model_path checkpoint is served under."""
        return self.settings.model_name or self.settings.model_path.stem

    def _pick_default(self, models: dict[str, ServedModel]) -> str | None:
        wanted = self.settings.default_model
        if wanted is not None:
            return wanted if wanted in models else None
        if self.settings.model_dir is None:
            return self._single_name
        if "model" in models:
            return "model"
        return min(models) if models else None

    def _housekeep(self) -> None:
        """Checks the checkpoints every reload_interval_s and trims the heap every second.

        With reload_interval_s = 0 the files are only checked until the default model serves.
        """
        interval = self.settings.reload_interval_s
        next_check = time.monotonic()
        next_trim = next_check + HEAP_TRIM_INTERVAL_S
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_check:
                if interval > 0 or not self.ready:
                    try:
                        self.reload()
                    except Exception:
                        log.exception("model reload check failed")
                next_check = now + (interval if interval > 0 else 1.0)
            if now >= next_trim:
                heap.trim()
                next_trim = now + HEAP_TRIM_INTERVAL_S
            self._stop.wait(max(0.0, min(next_check, next_trim) - time.monotonic()))


def _record_batch(model: str, size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.labels(model).observe(size)
    metrics.INFERENCE_DURATION.labels(model).observe(seconds)
