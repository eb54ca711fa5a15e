"""Protocol scenarios: 32 small images per request (v2 binary BYTES, /v1 multipart), and the
v2 single-image overhead against /v1/predict on scenario S, in the same server run.

`python -m bench.protocols` runs only these (a short, stand-alone run) and prints the table;
`python -m bench` runs them after the other rows and appends the table to bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from bench import decodecost, fixtures, load, modellimit
from bench.fixtures import Scenario
from bench.server import REPO, Server
from service.config import Settings

IMAGES_PER_REQUEST = 32
CONCURRENCY = (1, 8)
OVERHEAD_CONCURRENCY = (8, 32)
BOUNDARY = "benchboundary7f3a"


@dataclass(frozen=True)
class Body:
    """One prepared request: the file wrk sends, its Content-Type, an extra header."""

    label: str
    path: str
    file: Path
    content_type: str
    images: int
    header: str | None = None


@dataclass(frozen=True)
class Row:
    """One wrk run of one body."""

    body: Body
    concurrency: int
    result: load.LoadResult

    @property
    def images_per_s(self) -> float:
        """Images classified per second."""
        return self.result.rps * self.body.images


def v2_binary_body(files: list[bytes]) -> tuple[bytes, int]:
    """A Triton binary-extension infer body with one BYTES input; (body, JSON header length)."""
    tensor = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(files)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + tensor, len(header)


def multipart_body(files: list[bytes]) -> bytes:
    """A multipart/form-data body with one `file` part per image."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def bodies(scenario: Scenario, workdir: Path) -> list[Body]:
    """The four bodies: 32 images as v2 binary and /v1 multipart, one image as v2 and /v1."""
    image = scenario.body.read_bytes()
    many = [image] * IMAGES_PER_REQUEST
    v2_many, v2_many_header = v2_binary_body(many)
    v2_one, v2_one_header = v2_binary_body([image])
    made = []
    for label, path, data, content_type, images, header in (
        (
            "v2 binary BYTES x32",
            "/v2/models/model/infer",
            v2_many,
            "application/octet-stream",
            IMAGES_PER_REQUEST,
            f"Inference-Header-Content-Length: {v2_many_header}",
        ),
        (
            "/v1 multipart x32",
            "/v1/predict",
            multipart_body(many),
            f"multipart/form-data; boundary={BOUNDARY}",
            IMAGES_PER_REQUEST,
            None,
        ),
        (
            "v2 binary BYTES x1",
            "/v2/models/model/infer",
            v2_one,
            "application/octet-stream",
            1,
            f"Inference-Header-Content-Length: {v2_one_header}",
        ),
        ("/v1/predict x1", "/v1/predict", image, scenario.content_type, 1, None),
    ):
        file = workdir / (label.replace(" ", "-").replace("/", "") + ".body")
        file.write_bytes(data)
        made.append(Body(label, path, file, content_type, images, header))
    return made


def measure(
    workdir: Path, scenario: Scenario, env: dict[str, str], seconds: float, warmup: float
) -> list[Row]:
    """Serves scenario S's model as `model` and drives every body; v1 and v2 x1 alternate."""
    many_v2, many_v1, one_v2, one_v1 = bodies(scenario, workdir)
    env = {**env, "CONVSERVE_MODEL_PATH": str(_as_model(scenario.checkpoint, workdir))}
    server = Server(workdir, env).start(timeout=120)
    rows: list[Row] = []
    try:
        for body, concurrency in [(b, c) for b in (many_v2, many_v1) for c in CONCURRENCY] + [
            (b, c) for c in OVERHEAD_CONCURRENCY for b in (one_v1, one_v2, one_v1, one_v2)
        ]:
            _drive(server, body, concurrency, warmup)
            rows.append(Row(body, concurrency, _drive(server, body, concurrency, seconds)))
            print(f"[protocols] {body.label} c={concurrency}: {rows[-1].images_per_s:.0f} img/s")
    finally:
        server.stop()
    return rows


def render(rows: list[Row], model_limit: float, ceiling_images: float | None) -> str:
    """The markdown section of bench/results.md."""
    lines = [
        "## Protocols: 32 images per request, and v2 against /v1 for one image",
        "",
        f"Scenario S's model and image. Model limit {model_limit:.0f} images/s"
        + (f"; ceiling {ceiling_images:.0f} images/s" if ceiling_images else "")
        + " (1 / (1/(HTTP limit x 32) + 1/model limit + decode / cores)).",
        "",
        "| body | connections | req/s | images/s | p50 ms | p99 ms | non-2xx | of model limit "
        "| of ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row.result
        top = f"{row.images_per_s / ceiling_images:.2f}" if ceiling_images else "-"
        lines.append(
            f"| {row.body.label} | {row.concurrency} | {r.rps:.0f} | {row.images_per_s:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} "
            f"| {row.images_per_s / model_limit:.2f} | {top} |"
        )
    lines += ["", "v2 single-image overhead (req/s, the mean of two alternating runs each):", ""]
    for concurrency in OVERHEAD_CONCURRENCY:
        singles = [r for r in rows if r.concurrency == concurrency and r.body.images == 1]
        v1 = _mean([r.result.rps for r in singles if r.body.path == "/v1/predict"])
        v2 = _mean([r.result.rps for r in singles if r.body.path != "/v1/predict"])
        if v1 and v2:
            lines.append(
                f"- c={concurrency}: /v1/predict {v1:.0f}, v2 {v2:.0f} req/s: "
                f"v2 at {v2 / v1:.2f} of /v1"
            )
    return "\n".join(lines) + "\n"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _drive(server: Server, body: Body, concurrency: int, seconds: float) -> load.LoadResult:
    return load.run(
        server.url + body.path,
        body.file,
        body.content_type,
        concurrency,
        seconds,
        header=body.header,
    )


def _as_model(checkpoint: Path, workdir: Path) -> Path:
    """The checkpoint under the served name `model` (the v2 URL names it)."""
    target = workdir / "model.pt"
    if not target.exists():
        target.write_bytes(checkpoint.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.protocols`: the protocol rows alone, printed as markdown."""
    parser = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "runs" / "protocols")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    load.wrk_binary()
    defaults = Settings()
    small = fixtures.prepare(args.workdir)[0]
    limit = modellimit.measure(small.checkpoint, defaults.workers, defaults.torch_threads, 2.0, {})
    decode_ms = decodecost.measure(small, 2.0)
    env = {
        "CONVSERVE_WORKERS": str(defaults.workers),
        "CONVSERVE_TORCH_THREADS": str(defaults.torch_threads),
    }
    rows = measure(args.workdir, small, env, args.seconds, args.warmup)
    print(render(rows, limit.best, ceiling_images(None, limit.best, decode_ms, defaults.workers)))
    return 0


def ceiling_images(
    http_rps: float | None, model_limit: float, decode_ms: float, cores: int
) -> float | None:
    """Images/s of a server doing nothing but HTTP (per 32-image request), decode and forward."""
    if http_rps is None:
        return 1.0 / (1.0 / model_limit + decode_ms / 1000.0 / cores)
    return decodecost.ceiling(http_rps * IMAGES_PER_REQUEST, model_limit, decode_ms, cores)


if __name__ == "__main__":
    raise SystemExit(main())
