"""deploy/k8s and deploy/kserve, checked with no cluster and no network.

Rendered by Debian's kubectl 1.20 (the kustomize subset the manifests are written for),
validated against the Kubernetes schemas (kubernetes-validate --strict) and, for the custom
resources, against the fields their projects define (tests/deploy/schemas/); hardened as
checkov sees it; and keeping the promises the service relies on.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT, run, tool

K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SCHEMAS = Path(__file__).parent / "schemas" / "custom-resources.yaml"
CUSTOM_KINDS = {"ServiceMonitor", "InferenceService", "ServingRuntime", "ClusterServingRuntime"}
# The oldest and the newest Kubernetes that kubernetes-validate bundles schemas for.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
Doc = dict[str, Any]


def kubectl_120() -> str:
    """Debian's kubectl 1.20, put in the venv by `make setup-dev` (scripts/ensure-kubectl.sh)."""
    return tool("kubectl-1.20")


def render(kubectl: str, overlay: str) -> str:
    result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, f"{kubectl} kustomize {overlay}: {result.stderr}"
    return result.stdout


def docs_of(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kserve_docs() -> list[Doc]:
    return [doc for path in sorted(KSERVE.glob("*.yaml")) for doc in docs_of(path.read_text())]


def one(docs: list[Doc], kind: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def env_of(container: Doc) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc], str]:
    """(name, objects, YAML text) of one overlay rendered by kubectl 1.20."""
    text = render(kubectl_120(), request.param)
    return request.param, docs_of(text), text


def test_the_kubectl_is_debians_120() -> None:
    result = run([kubectl_120(), "version", "--client", "-o", "json"])
    version = json.loads(result.stdout)["clientVersion"]
    assert (version["major"], version["minor"]) == ("1", "20"), version


def test_every_overlay_renders_every_kind(overlay: tuple[str, list[Doc], str]) -> None:
    name, docs, _ = overlay
    kinds = {doc["kind"] for doc in docs}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert expected | {"NetworkPolicy", "ServiceMonitor"} <= kinds, kinds
    namespaces = {doc["metadata"].get("namespace") for doc in docs}
    assert len(namespaces) == 1 and None not in namespaces, f"{name}: {namespaces}"


def normalized(docs: list[Doc]) -> list[Doc]:
    """Objects in a fixed order, env lists by name (kustomize versions order patches apart)."""
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["env"] = sorted(container.get("env", []), key=lambda e: e["name"])
    return sorted(docs, key=lambda doc: (doc["kind"], doc["metadata"]["name"]))


def test_a_newer_kubectl_renders_the_same_objects(overlay: tuple[str, list[Doc], str]) -> None:
    newer = shutil.which("kubectl")
    if newer is None:
        pytest.skip("no other kubectl on PATH")
    version = json.loads(run([newer, "version", "--client", "-o", "json"]).stdout)
    if version["clientVersion"]["minor"] == "20":
        pytest.skip("the kubectl on PATH is 1.20 too")
    name, docs, _ = overlay
    assert normalized(docs_of(render(newer, name))) == normalized(docs)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_pass_strict_schema_validation(
    overlay: tuple[str, list[Doc], str], version: str, tmp_path: Path
) -> None:
    name, docs, _ = overlay
    built_in = [doc for doc in docs if doc["kind"] not in CUSTOM_KINDS]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(built_in))
    result = run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)], timeout=180)
    lines = (result.stdout + result.stderr).splitlines()
    # kubernetes-validate only warns (exit 0) about a kind or apiVersion it has no schema for,
    # e.g. one removed from this Kubernetes version: here every warning is a failure.
    problems = [line for line in lines if not line.startswith("INFO")]
    assert result.returncode == 0 and not problems, "\n".join(lines)
    assert sum("passed for resource" in line for line in lines) == len(built_in)


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = run([tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(path)])
    assert result.returncode != 0 and "readynessProbe" in result.stdout + result.stderr


def custom_resource_errors(doc: Doc) -> list[str]:
    """Where `doc` leaves the fields its project defines (tests/deploy/schemas/)."""
    schemas = yaml.safe_load(SCHEMAS.read_text())
    schema = {"definitions": schemas["definitions"], **schemas["kinds"][doc["kind"]]}
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{doc['kind']}/{doc['metadata']['name']} {'.'.join(map(str, e.absolute_path))}: "
        f"{e.message}"
        for e in validator.iter_errors(doc)
    ]


def test_custom_resources_use_only_documented_fields(overlay: tuple[str, list[Doc], str]) -> None:
    _, docs, _ = overlay
    custom = [doc for doc in docs + kserve_docs() if doc["kind"] in CUSTOM_KINDS]
    kinds = {doc["kind"] for doc in custom}
    assert {"ServiceMonitor", "InferenceService", "ClusterServingRuntime"} <= kinds
    errors = [error for doc in custom for error in custom_resource_errors(doc)]
    assert not errors, "\n".join(errors)


def test_protocol_version_is_refused_on_a_custom_container_predictor() -> None:
    isvc = one(docs_of((KSERVE / "inferenceservice.yaml").read_text()), "InferenceService")
    isvc["spec"]["predictor"]["protocolVersion"] = "v2"
    errors = custom_resource_errors(isvc)
    assert any("protocolVersion" in error for error in errors), errors


def checkov() -> str:
    """checkov from its own venv (make setup-dev), whose pins would fight the project's."""
    own = ROOT / ".venv-checkov" / "bin" / "checkov"
    return str(own) if own.exists() else tool("checkov")


def test_checkov_passes_with_every_skip_explained(
    overlay: tuple[str, list[Doc], str], tmp_path: Path
) -> None:
    name, docs, text = overlay
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    args = [checkov(), "--framework", "kubernetes", "--skip-download", "--output", "json"]
    files = ["-f", str(path), *(f"-f{p}" for p in sorted(KSERVE.glob("*.yaml")))]
    # A few seconds when the machine is idle; generous for a busy CI runner.
    result = run([*args, *files], timeout=300)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= len(docs) - 1
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    # A skip annotation without "=reason" is ignored by checkov (the check then fails above);
    # a reason must also say something.
    reasons = {c["check_id"]: c["check_result"]["suppress_comment"] for c in skipped}
    unexplained = [check for check, reason in reasons.items() if len(reason.split()) < 5]
    assert not unexplained, unexplained


def pod_specs(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """(where, pod spec) of the Deployment and of every KServe predictor or runtime."""
    found = [("Deployment", one(docs, "Deployment")["spec"]["template"]["spec"])]
    for doc in kserve_docs():
        spec = doc["spec"].get("predictor", doc["spec"])
        if "containers" in spec:
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", spec))
    return found


def test_probes_hit_routes_of_the_app(overlay: tuple[str, list[Doc], str]) -> None:
    from service import create_app
    from service.config import Settings

    app = create_app(Settings(workers=1, torch_threads=1), start_engine=False)
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    _, docs, _ = overlay
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A warm-up or reload 503 on /readyz must not restart the pod.
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for where, spec in pod_specs(docs):
        for c in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    assert c[probe]["httpGet"]["path"] in routes, f"{where} {probe}"


def test_grace_period_outlasts_prestop_and_the_drain(overlay: tuple[str, list[Doc], str]) -> None:
    _, docs, _ = overlay
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            pre_stop = container.get("lifecycle", {}).get("preStop")
            if pre_stop is None:
                continue
            command = pre_stop["exec"]["command"]
            assert command[0] == "sleep", command
            drain = int(env_of(container).get("CONVSERVE_GRACEFUL_TIMEOUT_S", "30"))
            grace = spec["terminationGracePeriodSeconds"]
            assert grace > int(command[1]) + drain, f"{where}: {grace} s"


def test_environment_names_are_settings_of_the_service(
    overlay: tuple[str, list[Doc], str],
) -> None:
    from service.config import Settings

    known = {f"CONVSERVE_{name.upper()}" for name in Settings.model_fields}
    _, docs, _ = overlay
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            unknown = set(env_of(container)) - known
            assert not unknown, f"{where}: not settings: {sorted(unknown)}"


def test_cpu_budget_is_workers_times_torch_threads(overlay: tuple[str, list[Doc], str]) -> None:
    _, docs, _ = overlay
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            env = env_of(container)
            # Set explicitly: the pod sees every core of its node, not its CPU limit.
            budget = int(env["CONVSERVE_WORKERS"]) * int(env["CONVSERVE_TORCH_THREADS"])
            resources = container["resources"]
            request = cpu_cores(resources["requests"]["cpu"])
            assert request == cpu_cores(resources["limits"]["cpu"]) == budget, where
            assert resources["requests"]["memory"] == resources["limits"]["memory"], where


def test_hpa_pdb_service_and_monitor_find_the_pods(overlay: tuple[str, list[Doc], str]) -> None:
    _, docs, _ = overlay
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = one(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["endpoints"]} <= port_names
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    bind_port = int(env_of(container)["CONVSERVE_BIND"].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in container["ports"]] == [bind_port]


def test_tmp_is_writable_under_a_read_only_root(overlay: tuple[str, list[Doc], str]) -> None:
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user
    _, docs, _ = overlay
    for where, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security["runAsUser"] == int(user.group(1)), where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is not an emptyDir"
            assert env_of(container)["CONVSERVE_METRICS_DIR"].startswith("/tmp/"), where


def test_the_checkpoint_comes_from_the_image_or_a_read_only_volume(
    overlay: tuple[str, list[Doc], str],
) -> None:
    _, docs, _ = overlay
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    path = env_of(container)["CONVSERVE_MODEL_PATH"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    if path.startswith("/opt/convserve/"):
        assert f"CONVSERVE_MODEL_PATH={path}" in dockerfile
        return
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claim in claims
