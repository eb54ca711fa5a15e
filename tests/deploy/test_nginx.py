"""deploy/nginx/nginx.conf, run by the real nginx in front of two real gunicorn servers.

The committed file is used as it is, except for what only the compose network provides: the
upstream name "api" becomes the two loopback servers, the listen address a free loopback port,
and /tmp a folder of the test.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.server import Server, free_port
from tests.deploy.conftest import DEPLOY, run, tool
from tests.images import png

CONF = DEPLOY / "nginx" / "nginx.conf"
UPSTREAM_LINE = "server api:8000 max_fails=1 fail_timeout=5s;"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def localized(conf: str, upstreams: list[str], port: int, tmp: Path) -> str:
    """The committed config with loopback upstreams, a loopback port and a private /tmp."""
    assert conf.count(UPSTREAM_LINE) == 1, "the upstream line of nginx.conf changed"
    servers = "\n        ".join(f"server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    conf = conf.replace(UPSTREAM_LINE, servers)
    assert conf.count("listen 8000 default_server;") == 1
    conf = conf.replace("listen 8000 default_server;", f"listen 127.0.0.1:{port} default_server;")
    return conf.replace("/tmp/", f"{tmp}/")


class Nginx:
    """nginx -c CONF in the foreground (the config says `daemon off`)."""

    def __init__(self, conf: Path, port: int) -> None:
        self.conf = conf
        self.url = f"http://127.0.0.1:{port}"
        self.log = conf.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [tool("nginx"), "-e", "stderr", "-c", str(self.conf)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", int(self.url.rsplit(":", 1)[1])), 1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Dropper:
    """A fake replica that accepts a connection, reads the request, and closes without answer."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.dropped = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                self.dropped += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def replicas(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    """Two gunicorn servers of one worker each, like two compose replicas."""
    workdir = tmp_path_factory.mktemp("replicas")
    env = {"CONVSERVE_MODEL_PATH": str(tiny_checkpoint), "CONVSERVE_WORKERS": "1"}
    servers = [Server(workdir, env), Server(workdir, env)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def start_nginx(tmp_path: Path, upstreams: list[str]) -> Nginx:
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(localized(CONF.read_text(), upstreams, port, tmp_path))
    result = run([tool("nginx"), "-t", "-q", "-e", "stderr", "-c", str(conf)])
    assert result.returncode == 0, result.stderr
    return Nginx(conf, port).start()


@pytest.fixture
def proxy(replicas: list[Server], tmp_path: Path) -> Iterator[Nginx]:
    nginx = start_nginx(tmp_path, [r.url.removeprefix("http://") for r in replicas])
    yield nginx
    nginx.stop()


def predict_count(server: Server) -> float:
    """convserve_requests_total for POST /v1/predict 200 on one replica."""
    text = server.get("/metrics").text
    pattern = re.compile(r"^convserve_requests_total\{(.*)\} ([0-9.e+]+)$", re.MULTILINE)
    total = 0.0
    for labels, value in pattern.findall(text):
        if 'endpoint="/v1/predict"' in labels and 'status="200"' in labels:
            total += float(value)
    return total


def assert_problem(response: requests.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def test_the_committed_file_is_what_compose_mounts() -> None:
    compose = (DEPLOY.parent / "docker-compose.yml").read_text()
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in compose


def test_body_limit_is_the_services_upload_limit() -> None:
    from service.config import Settings

    match = re.search(r"^\s*client_max_body_size (\d+)m;", CONF.read_text(), re.MULTILINE)
    assert match, "client_max_body_size not set in MiB"
    assert int(match.group(1)) * 1024 * 1024 == Settings().max_upload_bytes


def test_upstream_keepalive_closes_before_gunicorns() -> None:
    from service import gunicorn_conf

    conf = CONF.read_text()
    assert "proxy_http_version 1.1;" in conf and 'proxy_set_header Connection "";' in conf
    match = re.search(r"upstream convserve_api \{[^}]*keepalive_timeout (\d+)s;", conf, re.S)
    assert match and int(match.group(1)) < gunicorn_conf.keepalive


def test_predictions_reach_both_replicas_with_request_ids(
    proxy: Nginx, replicas: list[Server]
) -> None:
    before = [predict_count(r) for r in replicas]
    body = png()
    for i in range(40):
        response = requests.post(
            f"{proxy.url}/v1/predict",
            data=body,
            headers={"Content-Type": "image/png", "X-Request-ID": f"nginx-test-{i}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-ID"] == f"nginx-test-{i}"
    gained = [predict_count(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(gained) == 40 and min(gained) >= 10, gained
    # No id, or one the service would refuse: nginx's own id reaches the replica and the client.
    for headers in ({}, {"X-Request-ID": 'bad "id"'}):
        response = requests.get(f"{proxy.url}/v1/model", headers=headers, timeout=10)
        assert response.status_code == 200
        assert HEX_ID.match(response.headers["X-Request-ID"]), response.headers


def test_upstream_connections_are_kept_alive(proxy: Nginx, replicas: list[Server]) -> None:
    for _ in range(60):
        assert requests.get(f"{proxy.url}/v1/model", timeout=10).status_code == 200
    ports = " or ".join(f"dport = :{r.port}" for r in replicas)
    out = run(["ss", "-Htn", "state", "established", f"( {ports} )"]).stdout
    # 60 requests over a handful of reused connections, not 60 connections.
    assert 1 <= len(out.splitlines()) <= 8, out


def test_oversized_body_is_problem_json_or_the_protocols_error(proxy: Nginx) -> None:
    body = b"\0" * (11 * 1024 * 1024)
    response = requests.post(
        f"{proxy.url}/v1/predict", data=body, headers={"Content-Type": "image/png"}, timeout=30
    )
    problem = assert_problem(response, 413)
    assert "Retry-After" not in response.headers
    assert str(problem["type"]).startswith("https://convserve.dev/problems/")
    response = requests.post(f"{proxy.url}/v2/models/model/infer", data=body, timeout=30)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()) == {"error"}
    response = requests.put(f"{proxy.url}/predictions/model", data=body, timeout=30)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["code"] == 413 and set(response.json()) == {"code", "type", "message"}


@pytest.mark.parametrize("dead", ["refuses", "drops"])
def test_a_dead_replica_costs_no_request(dead: str, replicas: list[Server], tmp_path: Path) -> None:
    dropper = Dropper()
    # A replica that is gone (nothing listens) or one that reads the request and closes.
    bad = f"127.0.0.1:{free_port()}" if dead == "refuses" else dropper.address
    nginx = start_nginx(tmp_path, [bad, replicas[0].url.removeprefix("http://")])
    try:
        statuses = []
        for _ in range(6):
            response = requests.post(
                f"{nginx.url}/v1/predict",
                data=png(),
                headers={"Content-Type": "image/png"},
                timeout=30,
            )
            statuses.append(response.status_code)
        # POST is not idempotent for nginx: without non_idempotent a dropped one would be a 502.
        assert statuses == [200] * 6
        assert dead == "refuses" or dropper.dropped >= 1
    finally:
        nginx.stop()
        dropper.close()


def test_no_replica_left_is_problem_json_with_retry_after(tmp_path: Path) -> None:
    closed = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    nginx = start_nginx(tmp_path, closed)
    try:
        response = requests.post(f"{nginx.url}/v1/predict", data=b"x", timeout=30)
        assert_problem(response, 502)
        assert response.headers["Retry-After"] == "1"
        response = requests.get(f"{nginx.url}/v2/health/ready", timeout=30)
        assert response.status_code == 502
        assert response.headers["Content-Type"] == "application/json"
        assert json.loads(response.text)["error"]
    finally:
        nginx.stop()
