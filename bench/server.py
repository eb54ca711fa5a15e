"""Starts the real gunicorn server (production config) on a free loopback port, and reads its
workers' CPU time and memory: for the benchmark and the integration tests alike."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from service.engine import HEAP_TRIM_INTERVAL_S

REPO = Path(__file__).resolve().parent.parent
# Seconds a worker idles before its RSS is read: past a heap trim (service.engine).
IDLE_S = 2 * HEAP_TRIM_INTERVAL_S + 0.5


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """gunicorn -c python:service.gunicorn_conf 'service:create_app()' as a subprocess.

    `env` holds CONVSERVE_* overrides; stderr (the JSON logs) goes to `log_path`. `app` is the
    gunicorn application (the benchmark serves its own factory with the same config).
    `sync_workers` replaces the production config by that many plain sync workers and nothing
    else (the benchmark's tuned peer, bench/peer.py).
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        app: str = "service:create_app()",
        sync_workers: int | None = None,
    ) -> None:
        self.app = app
        self.sync_workers = sync_workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        self.metrics_dir = workdir / f"metrics-{self.port}"
        self.env = {
            **os.environ,
            "CONVSERVE_BIND": f"127.0.0.1:{self.port}",
            "CONVSERVE_WORKERS": "2",
            "CONVSERVE_THREADS": "8",
            "CONVSERVE_METRICS_DIR": str(self.metrics_dir),
            "CONVSERVE_RELOAD_INTERVAL_S": "0.5",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> Server:
        """Starts gunicorn; waits (bounded) for /readyz 200 or, if not wait_ready, /healthz."""
        if self.sync_workers is None:
            config = ["-c", "python:service.gunicorn_conf"]
        else:
            bind = self.url.removeprefix("http://")
            config = ["-b", bind, "-w", str(self.sync_workers), "-k", "sync"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", *config, self.app],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for("/readyz" if wait_ready else "/healthz", timeout)
        return self

    def wait_for(self, path: str, timeout: float = 60.0, status: int = 200) -> None:
        """Polls `path` until it answers `status`; raises with the log tail after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + path, timeout=2).status_code == status:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{path} did not answer {status} in {timeout}s:\n{self.log_tail()}")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """GET on the server with a 10 s timeout."""
        return requests.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """POST on the server with a 30 s timeout."""
        return requests.post(self.url + path, timeout=30, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines gunicorn and the app logged."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def worker_pids(self) -> set[int]:
        """PIDs of the live worker processes."""
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return {int(pid) for pid in out.split()}

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful drain), then SIGKILL after `timeout`; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def cpu_seconds(pids: set[int]) -> float | None:
    """utime + stime of the processes, in seconds; None when one of them is gone."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return None
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """VmRSS of the process, in kB (0 when it has none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
