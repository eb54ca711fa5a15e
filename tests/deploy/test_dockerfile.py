"""Dockerfile and .dockerignore: hadolint clean, the stages and runtime promises of the contract."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (FROM ... AS name)."""
    found: dict[str, list[tuple[str, str]]] = {}
    name = ""
    for keyword, args in instructions():
        if keyword == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else args
            found[name] = []
        elif name:
            found[name].append((keyword, args))
    return found


def test_hadolint_clean() -> None:
    result = run([tool("hadolint"), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_stages_build_then_model_then_slim_runtime() -> None:
    assert list(stages()) == ["builder", "model", "runtime"]
    runtime = stages()["runtime"]
    base = [args for keyword, args in instructions() if keyword == "FROM"]
    assert base[0].startswith("${PYTHON_IMAGE}") and base[2].startswith("${PYTHON_IMAGE}")
    runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    for compiler in ("gcc", "g++", "build-essential", "clang", "python3-dev"):
        assert compiler not in runs, f"the runtime stage installs {compiler}"


def test_torch_is_the_cpu_build_from_an_index_or_the_context() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "ARG TORCH_WHEEL=" in text
    assert "torch==2.13.0" in text
    assert "pip install -r /tmp/requirements.lock" in text


def test_runtime_is_non_root_with_tini_healthcheck_and_gunicorn() -> None:
    runtime = dict((keyword, args) for keyword, args in stages()["runtime"])
    user = runtime["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, runtime["USER"]
    assert runtime["ENTRYPOINT"] == '["/usr/bin/tini", "--"]'
    assert "gunicorn" in runtime["CMD"] and "service.gunicorn_conf" in runtime["CMD"]
    assert "/opt/convserve/healthcheck.py" in runtime["HEALTHCHECK"]
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    env = runtime["ENV"]
    assert "CONVSERVE_METRICS_DIR=/tmp/" in env, "the multiprocess dir must live on the tmpfs"


def test_every_convserve_variable_of_the_image_is_a_setting() -> None:
    from service.config import Settings

    fields = {f"CONVSERVE_{name.upper()}" for name in Settings.model_fields}
    used = set(re.findall(r"\b(CONVSERVE_[A-Z_]+)=", DOCKERFILE.read_text()))
    assert used, "the Dockerfile sets no CONVSERVE_ variables"
    assert used <= fields, f"not settings: {sorted(used - fields)}"


# --- .dockerignore -------------------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = fnmatch.translate(body).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(.*/)?")  # **/ : any number of folders
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            verdict = not negate
    return verdict


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "checkpoints/model.pt",
        "service/__pycache__/api.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        "tests/deploy/test_dockerfile.py",
        "bench/runs/x.md",
        "deploy/test/docker-test.sh",
        "deploy/.cache/base.tar",
    ],
)
def test_dockerignore_keeps_out(path: str, ignore_patterns: list[str]) -> None:
    assert ignored(path, ignore_patterns)


def test_dockerignore_lets_in_what_the_dockerfile_copies(ignore_patterns: list[str]) -> None:
    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        path = source.rstrip("*").rstrip("/")
        assert (ROOT / path).exists() or source.endswith("*"), f"COPY {source}: not in the repo"
        assert not ignored(path, ignore_patterns), f"COPY {source}: .dockerignore keeps it out"
    for path in ("models/cnn.py", "service/api.py", "deploy/docker/healthcheck.py"):
        assert not ignored(path, ignore_patterns), path


def test_requirements_lock_satisfies_pyproject() -> None:
    import tomllib

    from packaging.requirements import Requirement

    lock = {}
    for line in (DEPLOY / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[name.lower().replace("_", "-")] = version
    assert "torch" not in lock, "torch is installed from the CPU index or a wheel, not the lock"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        if name == "torch":
            assert str(requirement.specifier) == "==2.13.0", "the Dockerfile pins torch==2.13.0"
            continue
        assert name in lock, f"{name} is missing from requirements.lock: run update-lock.sh"
        assert requirement.specifier.contains(lock[name]), (
            f"requirements.lock pins {name}=={lock[name]}, outside {requirement.specifier}: "
            "run deploy/docker/update-lock.sh"
        )


# --- the HEALTHCHECK script, against a real HTTP server on loopback -------------------------------


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, list[int]]]:
    status = [503]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status[0] if self.path == "/readyz" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], status
    server.shutdown()
    server.server_close()


def test_healthcheck_follows_readyz(readyz_server: tuple[int, list[int]]) -> None:
    port, status = readyz_server
    script = str(DEPLOY / "docker" / "healthcheck.py")
    env = {"CONVSERVE_BIND": f"0.0.0.0:{port}", "PATH": "/usr/bin:/bin"}

    def check() -> int:
        return subprocess.run([sys.executable, script], env=env, timeout=30, check=False).returncode

    assert check() == 1
    status[0] = 200
    assert check() == 0
    env["CONVSERVE_BIND"] = "0.0.0.0:1"  # nothing listens there
    assert check() == 1
