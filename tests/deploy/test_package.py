"""The wheel (what the Docker image installs, non-editable) carries the page and the client."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.deploy.conftest import ROOT


def test_wheel_holds_the_page_files_and_the_cli(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("convserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    static = ROOT / "service" / "static"
    shipped = {p.relative_to(ROOT).as_posix() for p in static.rglob("*") if p.is_file()}
    assert {"service/static/index.html", "service/static/app.js"} <= shipped
    assert any(name.endswith(".png") for name in shipped)
    assert shipped <= names, sorted(shipped - names)
    assert {"client/cli.py", "client/api.py", "models/explain.py", "service/explain.py"} <= names
    assert "convserve = client.cli:main" in scripts
