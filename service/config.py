"""The one Settings object: every knob of the service, read from CONVSERVE_* variables."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
# A served model name is a URL path segment and a metrics label value: kept short and plain.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: its affinity, capped by a cgroup v2 CPU quota.

    A container started with `--cpus=1.5` on a 16-core host gets 2, not 16.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return max(1, cores)


class Settings(BaseSettings):
    """Service configuration; the environment variable of each field is CONVSERVE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="CONVSERVE_", protected_namespaces=())

    model_path: Path = Field(Path("checkpoints/model.pt"), description="Checkpoint to serve.")
    model_name: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="Name the model_path checkpoint is served under (/v1/models/<name>, "
        "/v2/models/<name>); unset: its file stem.",
    )
    model_dir: Path | None = Field(
        None,
        description="Serve every checkpoint (*.pt) in this folder under its file stem; "
        "overrides model_path.",
    )
    default_model: str | None = Field(
        None,
        description="Name of the model /v1/predict and /v1/model serve; unset: 'model' when "
        "model_dir has one, else its first name in sort order.",
    )
    bind: str = Field("0.0.0.0:8000", description="gunicorn bind address (host:port).")
    workers: int = Field(0, ge=0, description="gunicorn worker processes; 0 = one per core.")
    threads: int = Field(16, ge=1, description="Request threads per worker (gthread).")
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads per worker; 0 = cores / workers."
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        description="Images per forward pass (dynamic batching); 1 turns batching off. Unset, "
        "each model is timed at load: batching only where it saves per image, capped where an "
        "image costs least.",
    )
    max_batch_delay_ms: float = Field(
        2.0, ge=0, description="Milliseconds a forward pass waits for more images to batch."
    )
    max_queue_images: int = Field(
        512, ge=1, description="Images queued per worker before requests are shed with 503."
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Request body limit, bytes.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Decoded image limit, pixels.")
    max_images_per_request: int = Field(64, ge=1, description="Images in one request.")
    decode_timeout_ms: float = Field(
        2000.0,
        gt=0,
        description="CPU milliseconds one image may spend in its decoder; past that it is cut "
        "off with 422.",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 autocast on CPUs with AMX/AVX-512-BF16 (opt-in)."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, inference endpoints need 'Authorization: Bearer <key>'."
    )
    metrics_need_api_key: bool = Field(False, description="Also protect /metrics with the API key.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    metrics_dir: Path = Field(
        Path(tempfile.gettempdir()) / "convserve-metrics",
        description="prometheus-client multiprocess directory, wiped at server start.",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a request may wait for its inference before a 503."
    )
    worker_timeout_s: int = Field(60, ge=1, description="gunicorn worker timeout, seconds.")
    graceful_timeout_s: int = Field(
        30, ge=1, description="Seconds in-flight requests get to finish on SIGTERM."
    )
    reload_interval_s: float = Field(
        2.0, ge=0, description="Seconds between checks of the checkpoint for a new version; 0: off."
    )
    client_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request line and headers, from its first "
        "byte (or from connecting); then a 408, or a close when it sent nothing.",
    )
    client_body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds of each window over which a request body must arrive at "
        "client_body_min_rate or faster (or be complete); a slower body gets a 408.",
    )
    client_body_min_rate: int = Field(
        1024,
        ge=1,
        description="Slowest accepted body upload, bytes per second, averaged over each "
        "client_body_timeout_s window.",
    )
    max_reading_connections: int = Field(
        256,
        ge=1,
        description="Connections per worker whose request is still arriving; at this many the "
        "worker stops accepting new connections until one completes or times out.",
    )
    lingering_close_s: float = Field(
        5.0,
        ge=0,
        description="Seconds a connection answered before its body was read (413, 401, 408...) "
        "keeps being read and discarded before it closes, so the client sees the answer.",
    )
    lingering_close_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes discarded at most in that time.",
    )
    max_concurrent_explains: int = Field(
        2,
        ge=1,
        description="POST /v1/explain requests one worker runs at once; more get 503 with "
        "Retry-After.",
    )

    @model_validator(mode="after")
    def _size_to_cpu(self) -> Settings:
        cores = available_cores()
        if self.workers == 0:
            self.workers = cores
        if self.torch_threads == 0:
            self.torch_threads = max(1, cores // self.workers)
        return self

    @property
    def max_batch_delay_s(self) -> float:
        """max_batch_delay_ms in seconds."""
        return self.max_batch_delay_ms / 1000.0
