"""docker-compose.yml: valid for docker-compose, loopback ports, the api's promises, real paths."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, run, tool

COMPOSE = ROOT / "docker-compose.yml"
KNOBS = ("API_", "PROMETHEUS_PORT", "GRAFANA_", "CONVSERVE_")


def compose_env() -> dict[str, str]:
    """The caller's environment without the knobs of docker-compose.yml, so defaults apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith(KNOBS)}


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """docker-compose's own reading of the file (variables substituted, paths made absolute)."""
    import subprocess

    result = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=compose_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_docker_compose_config_is_valid() -> None:
    result = run([tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"])
    assert result.returncode == 0, result.stderr


def test_services(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"api", "nginx", "prometheus", "grafana"}


def test_every_published_port_is_loopback_only(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_default_ports(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    # The replicas are reached through nginx only (and scraped by Prometheus on the network).
    assert "ports" not in services["api"] and services["api"]["expose"] == ["8000"]
    ports = {name: s["ports"][0] for name, s in services.items() if name != "api"}
    assert ports["nginx"].startswith("127.0.0.1:8000:8000")
    assert ports["prometheus"].startswith("127.0.0.1:9090:9090")
    assert ports["grafana"].startswith("127.0.0.1:3000:3000")


def test_api_runs_hardened_with_limits_and_healthcheck(resolved: dict[str, Any]) -> None:
    api = resolved["services"]["api"]
    assert api["build"]["context"] == str(ROOT)
    assert api["read_only"] is True
    assert "/tmp" in api["tmpfs"]
    assert float(api["cpus"]) > 0 and api["mem_limit"]
    assert api["restart"] in ("unless-stopped", "always", "on-failure")
    assert "healthcheck.py" in " ".join(api["healthcheck"]["test"])
    # Docker's default 10 s would SIGKILL gunicorn before its graceful timeout drained requests.
    grace = api["stop_grace_period"]
    assert int(re.sub(r"s$", "", grace)) > 30, grace
    assert any(v.endswith(":/models:ro") for v in api["volumes"]), api["volumes"]


def test_api_environment_names_only_real_settings(resolved: dict[str, Any]) -> None:
    from service.config import Settings

    fields = {f"CONVSERVE_{name.upper()}" for name in Settings.model_fields}
    env = resolved["services"]["api"]["environment"]
    assert set(env) <= fields, f"not settings: {sorted(set(env) - fields)}"
    workers, torch_threads = int(env["CONVSERVE_WORKERS"]), int(env["CONVSERVE_TORCH_THREADS"])
    cpus = float(resolved["services"]["api"]["cpus"])
    assert workers * torch_threads <= cpus, "workers x torch threads oversubscribe the CPU limit"


def test_build_arguments_exist_in_the_dockerfile(resolved: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in resolved["services"]["api"]["build"]["args"]:
        assert re.search(rf"^ARG {name}=", dockerfile, re.MULTILINE), name


def test_mounted_config_folders_exist(resolved: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for volume in resolved["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_config_and_grafana_provisioning_paths_agree(resolved: dict[str, Any]) -> None:
    prometheus = resolved["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert f"{ROOT}/deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    grafana = resolved["services"]["grafana"]
    targets = {v.split(":")[1] for v in grafana["volumes"]}
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/convserve.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] in targets
    assert "/etc/grafana/provisioning" in targets


def test_nginx_runs_unprivileged_after_healthy_replicas(resolved: dict[str, Any]) -> None:
    nginx = resolved["services"]["nginx"]
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"
    assert nginx["read_only"] is True and "/tmp" in nginx["tmpfs"]
    assert nginx["user"].split(":")[0] not in ("0", "root")
    assert f"{ROOT}/deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
