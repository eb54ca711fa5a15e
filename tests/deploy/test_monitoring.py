"""Prometheus config and alerting rules (promtool), and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, ROOT, run, tool

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "convserve.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Series Prometheus itself makes for every target.
BUILTIN_SERIES = {"up"}
# What a PromQL selector names but is no metric.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
PROMQL_WORDS |= {"and", "or", "unless", "le"}


def readme_metrics() -> dict[str, str]:
    """The README's metric table (the documented contract), name -> type."""
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"^\|\s*`(convserve_\w+)`\s*\|\s*(\w+)", text, re.MULTILINE))


def service_metrics() -> dict[str, str]:
    """The metrics service/metrics.py really registers, name -> type."""
    from prometheus_client.metrics import MetricWrapperBase

    from service import metrics

    found: dict[str, str] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            # prometheus-client keeps a counter's name without the _total it exposes.
            suffix = "_total" if value._type == "counter" else ""
            found[value._name + suffix] = str(value._type)
    return found


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    found = []
    for panel in dashboard()["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], t["expr"]) for t in inner.get("targets", []) if "expr" in t]
    return found


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (identifiers before { or [ or alone)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_ranges)
    without_numbers = re.sub(r"(?<![\w:])\d+(\.\d+)?(e[+-]?\d+)?", "", without_groupings)
    names = set()
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", without_numbers):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def base_metric(name: str, types: dict[str, str]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


# --- Prometheus --------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    result = run([tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    rules = sorted((PROMETHEUS / "rules").glob("*.yml"))
    assert rules
    result = run([tool("promtool"), "check", "rules", *map(str, rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*_test.yml"))
    assert tests
    result = run([tool("promtool"), "test", "rules", *map(str, tests)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_errors_latency_and_down_replicas() -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "convserve.yml").read_text())["groups"]
    exprs = {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}
    assert any('status=~"5.."' in e for e in exprs.values()), "an error-ratio alert"
    assert any("histogram_quantile(0.99" in e for e in exprs.values()), "a p99 latency alert"
    assert any(e.startswith("up{") for e in exprs.values()), "an instance-down alert"


def test_scrape_discovers_every_api_replica_by_dns() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "convserve")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == 8000


def test_rules_use_only_known_metrics() -> None:
    types = service_metrics()
    groups = yaml.safe_load((PROMETHEUS / "rules" / "convserve.yml").read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        for name in metric_names(rule["expr"]):
            assert name in BUILTIN_SERIES or base_metric(name, types) in types, (
                rule["alert"],
                name,
            )


# --- Grafana -----------------------------------------------------------------------------------


def test_dashboard_parses_with_unique_panel_ids() -> None:
    data = dashboard()
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    assert data["uid"] and data["title"]
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_dashboard_metric_is_documented_in_the_readme() -> None:
    documented = readme_metrics()
    for title, expr in panel_targets():
        for name in metric_names(expr):
            if name in BUILTIN_SERIES:
                continue
            assert base_metric(name, documented) in documented, f"{title}: {name} not in README"


def test_the_readme_documents_every_metric_the_service_exports() -> None:
    assert readme_metrics() == service_metrics()


def test_every_dashboard_metric_is_exported_by_the_service() -> None:
    types = service_metrics()
    used = set()
    for title, expr in panel_targets():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        for name in names:
            if name in BUILTIN_SERIES:
                continue
            base = base_metric(name, types)
            assert base in types, f"{title}: {name} is not a metric of service/metrics.py"
            used.add(base)
    for required in (
        "convserve_requests_total",
        "convserve_request_duration_seconds",
        "convserve_batch_size",
        "convserve_inference_duration_seconds",
        "convserve_predictions_total",
        "convserve_inflight_requests",
    ):
        assert required in used, f"no panel shows {required}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, as a recording rule, with Grafana's variables filled in."""
    substitutions = {"$__rate_interval": "1m", "$instance": ".*", "$endpoint": ".*"}
    rules = []
    for i, (_title, expr) in enumerate(panel_targets()):
        for key, value in substitutions.items():
            expr = expr.replace(key, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert provisioned["url"] == "http://prometheus:9090"
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == provisioned["uid"]
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(convserve_request_duration_seconds_bucket"
        '{job="convserve", endpoint=~"$endpoint"}[$__rate_interval]))) / count(up == 1)'
    )
    assert metric_names(expr) == {"convserve_request_duration_seconds_bucket", "up"}
