"""Hot reload: a new checkpoint file is served without a restart and without a failed request;
a corrupt, incompatible or malicious one is rejected, visibly, while the old model serves on.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from bench.server import Server
from models.checkpoint import checkpoint_version, save_atomic
from tests.images import png
from tests.reliability.checks import sample, scrape
from tests.reliability.conftest import StartServer, wait_all_workers_ready
from tests.reliability.load import BackgroundLoad, Call

PREDICT = Call("POST", "/v1/predict", png(), {"Content-Type": "image/png"})
WORKERS = 2


def replace_atomically(target: Path, data: bytes) -> None:
    """Writes `data` beside `target` and renames it into place, as a deployment would."""
    temporary = target.with_name(f".{target.name}.new")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def reloads(server: Server, outcome: str) -> float:
    return sample(scrape(server.url), "convserve_model_reloads_total", outcome=outcome)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def served_version(result_body: bytes) -> str:
    version: str = orjson.loads(result_body)["model"]["version"]
    return version


@pytest.mark.slow
def test_a_new_checkpoint_is_served_without_a_failed_request(
    tiny_checkpoint: Path, tiny_rgb_checkpoint: Path, tmp_path: Path, start_server: StartServer
) -> None:
    model = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, model)
    old, new = checkpoint_version(tiny_checkpoint), checkpoint_version(tiny_rgb_checkpoint)
    running = start_server(model)
    pids = running.worker_pids()
    with BackgroundLoad(
        running.url,
        [PREDICT],
        connections=6,
        duration_s=60,
        keep_body=lambda _call, status: status == 200,
    ) as load:
        time.sleep(1.5)
        replace_atomically(model, tiny_rgb_checkpoint.read_bytes())
        wait_for(lambda: reloads(running, "loaded") >= 2 * WORKERS)
        time.sleep(1.0)
    assert load.result is not None
    outcomes = load.result.outcomes
    print(f"hot reload under load: {load.result.statuses()} in {load.result.wall_s:.1f} s")
    assert load.result.statuses() == {200: len(outcomes)}, load.result.failures()[:5]
    versions = [served_version(o.body) for o in outcomes]
    assert versions[0] == old and versions[-1] == new
    assert set(versions) == {old, new}
    info = running.get("/v1/model").json()
    assert info["version"] == new and info["classes"] == ["blue", "green", "red"]
    assert reloads(running, "failed") == 0
    assert running.worker_pids() == pids


class Payload:
    """Runs a shell command when unpickled: what a malicious checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def malicious_checkpoints(marker: Path) -> dict[str, bytes]:
    """A torch zip checkpoint and a bare pickle, each running `touch marker` when unpickled."""
    zipped = marker.with_suffix(".zip.pt")
    torch.save({"format_version": 1, "config": Payload(f"touch {marker}")}, zipped)
    return {
        "malicious torch checkpoint": zipped.read_bytes(),
        "malicious pickle": pickle.dumps(Payload(f"touch {marker}")),
    }


def bad_checkpoints(good: Path, marker: Path) -> dict[str, bytes]:
    payload: dict[str, Any] = torch.load(good, weights_only=True)
    variants: dict[str, dict[str, Any]] = {
        "unsupported format version": {**payload, "format_version": 999},
        "tensor shapes that do not fit the config": {
            **payload,
            "state_dict": {
                name: torch.zeros(3, 3) if index == 0 else tensor
                for index, (name, tensor) in enumerate(payload["state_dict"].items())
            },
        },
        "class names that do not fit the outputs": {**payload, "classes": ["a", "b"]},
        "NaN weights": {
            **payload,
            "state_dict": {n: t * float("nan") for n, t in payload["state_dict"].items()},
        },
    }
    files = {}
    for name, variant in variants.items():
        path = marker.parent / "variant.pt"
        save_atomic(variant, path)
        files[name] = path.read_bytes()
    data = good.read_bytes()
    files["truncated file"] = data[: len(data) // 2]
    files["random bytes"] = os.urandom(4096)
    files["empty file"] = b""
    files.update(malicious_checkpoints(marker))
    return files


def test_the_malicious_payload_is_live(tmp_path: Path) -> None:
    """Control: loaded without weights_only, the payload does run (so the tests below mean it)."""
    marker = tmp_path / "control"
    path = tmp_path / "evil.pt"
    path.write_bytes(malicious_checkpoints(marker)["malicious torch checkpoint"])
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_bad_checkpoints_are_rejected_and_never_executed(
    tiny_checkpoint: Path, tmp_path: Path, start_server: StartServer
) -> None:
    marker = tmp_path / "pwned"
    bad = bad_checkpoints(tiny_checkpoint, marker)
    model = tmp_path / "model.pt"
    model.write_bytes(bad["malicious torch checkpoint"])

    # At start-up: the workers serve /healthz, refuse /readyz, and never run the payload.
    running = start_server(model, wait_ready=False)
    time.sleep(1.0)
    readyz = running.get("/readyz")
    assert readyz.status_code == 503
    assert "weights_only" in readyz.json()["detail"]
    assert running.post("/v1/predict", data=png()).status_code == 503
    assert not marker.exists()

    # A good file then makes them ready without a restart.
    replace_atomically(model, tiny_checkpoint.read_bytes())
    wait_all_workers_ready(running)
    good = checkpoint_version(tiny_checkpoint)
    assert running.get("/v1/model").json()["version"] == good
    pids = running.worker_pids()

    # Each bad file in turn, under load: rejected by every worker, counted, logged, and the
    # good model answers every request meanwhile.
    with BackgroundLoad(running.url, [PREDICT], connections=4, duration_s=120) as load:
        for name, data in bad.items():
            expected = reloads(running, "failed") + WORKERS
            replace_atomically(model, data)
            wait_for(lambda: reloads(running, "failed") >= expected)  # noqa: B023
            assert running.get("/v1/model").json()["version"] == good, name
            assert running.get("/readyz").status_code == 200, name
    assert load.result is not None
    print(f"{len(bad)} bad checkpoints under load: {load.result.statuses()}")
    assert load.result.statuses() == {200: len(load.result.outcomes)}
    assert not marker.exists(), "a checkpoint's pickled code ran"
    log = running.log_path.read_text(errors="replace")
    assert log.count("checkpoint rejected, keeping the current model") >= len(bad) * WORKERS
    assert "refused, it holds objects that weights_only loading does not allow" in log
    assert running.worker_pids() == pids
