"""The README's Interoperability commands work as written against the default model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server import REPO, Server
from tests.service.test_default_model import DATASET, DEFAULT_CHECKPOINT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("CI") and not (DEFAULT_CHECKPOINT.exists() and DATASET.exists()),
        reason="needs checkpoints/model.pt and dataset-fashion-mnist (make test provides both)",
    ),
]
README_URL = "127.0.0.1:8000"


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("readme")
    env = {"CONVSERVE_MODEL_PATH": str(DEFAULT_CHECKPOINT), "CONVSERVE_WORKERS": "1"}
    running = Server(workdir, env).start()
    yield running
    running.stop()


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tritonclient_snippet_and_torchserve_curl_lines(
    default_server: Server,
) -> None:
    text = section("Interoperability")
    address = default_server.url.removeprefix("http://")
    curls = blocks(text, "sh")
    (snippet,) = blocks(text, "python")
    # As a user runs them: from the repository's folder, which holds samples/.
    printed = run([sys.executable, "-c", snippet.replace(README_URL, address)], REPO)
    assert "True" in printed and ":9:Ankle boot" in printed, printed
    answers = [
        run(["bash", "-c", command.split("#")[0].replace(README_URL, address)], REPO)
        for command in curls[0].strip().splitlines()
    ]
    assert json.loads(answers[0]) == {"status": "Healthy"}
    for answer in answers[1:]:
        scores = json.loads(answer)
        assert next(iter(scores)) == "Ankle boot" and len(scores) == 5
