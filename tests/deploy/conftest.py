"""Fixtures of the deploy checks: the repository's paths and the external tools they run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    """Path of a command-line tool: the venv's own first, then PATH.

    Missing, it skips the test on a developer's machine and fails it under CI=true, where
    `make setup-dev` must have installed it.
    """
    found = shutil.which(
        name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if found:
        return found
    message = f"{name} is not installed (make setup-dev installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run(args: list[str], cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs a tool; its output becomes the assertion message when it fails."""
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
