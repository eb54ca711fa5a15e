"""`convserve predict IMAGE...` and `convserve explain IMAGE --out DIR`.

Exit status: 0 when every image was answered, 1 when the server refused one (its problem
detail goes to stderr) or could not be reached, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from client.api import ApiError, Client

DEFAULT_URL = "http://127.0.0.1:8000"
_DATA_URL = re.compile(r"^data:image/png;base64,(.*)$", re.DOTALL)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    client = Client(args.url, args.api_key or os.environ.get("CONVSERVE_API_KEY") or None)
    if args.command == "predict":
        return _predict(client, args.images, args.top_k, args.json)
    return _explain(client, args.image, args.out, args.top_k, args.target)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve", description="Ask a convserve server about images."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("CONVSERVE_URL", DEFAULT_URL),
        help="server URL (default: $CONVSERVE_URL or %(default)s)",
    )
    common.add_argument(
        "--api-key",
        help="API key, when the server needs one (default: $CONVSERVE_API_KEY; the variable "
        "keeps it out of the process list)",
    )
    common.add_argument(
        "--top-k", type=int, default=3, help="classes to show per image (default %(default)s)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", parents=[common], help="print the top classes of each image"
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--json", action="store_true", help="print the server's JSON answers")
    explain = commands.add_parser(
        "explain",
        parents=[common],
        help="write an image's feature maps, kernels and Grad-CAM as PNG files",
    )
    explain.add_argument("image", type=Path, metavar="IMAGE")
    explain.add_argument("--out", type=Path, required=True, help="folder for the pictures")
    explain.add_argument("--target", help="class to explain (label or index; default: the top)")
    return parser


def _predict(client: Client, images: list[Path], top_k: int, as_json: bool) -> int:
    failed = 0
    answers: list[dict[str, Any]] = []
    for image in images:
        try:
            answer = client.predict(image, top_k)
        except ApiError as exc:
            print(f"convserve: {image}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if as_json:
            answers.append({"image": str(image), **answer})
        else:
            print(_table(image, answer["model"], answer["predictions"][0]))
    if as_json:
        print(json.dumps(answers, indent=2))
    return 1 if failed else 0


def _table(image: Path, model: dict[str, str], prediction: dict[str, Any]) -> str:
    width = max(len("class"), *(len(entry["label"]) for entry in prediction["top_k"]))
    lines = [
        f"{image}  (model {model['name']} {model['version']})",
        f"  rank  {'class':<{width}}  probability",
    ]
    for rank, entry in enumerate(prediction["top_k"], start=1):
        lines.append(f"  {rank:>4}  {entry['label']:<{width}}  {entry['score']:>10.2%}")
    return "\n".join(lines)


def _explain(client: Client, image: Path, out: Path, top_k: int, target: str | None) -> int:
    try:
        answer = client.explain(image, top_k, target)
    except ApiError as exc:
        print(f"convserve: {image}: {exc}", file=sys.stderr)
        return 1
    written = write_pictures(answer, out)
    print(_table(image, answer["model"], answer["prediction"]))
    cam = answer["gradcam"]["target"]
    print(f"Grad-CAM for {cam['label']} ({cam['score']:.2%}); wrote {written} PNG files to {out}")
    return 0


def write_pictures(answer: dict[str, Any], out: Path) -> int:
    """Writes every picture of an explain answer under `out` and the rest as explain.json.

    Layout: input.png, gradcam-heatmap.png, gradcam-overlay.png, kernels/NN.png and
    layers/NN-<layer name>-<kind>/NNN.png (one per channel). Returns the number of PNGs.
    """
    out.mkdir(parents=True, exist_ok=True)
    pictures: dict[Path, str] = {
        out / "input.png": answer["input"]["image"],
        out / "gradcam-heatmap.png": answer["gradcam"]["heatmap"],
        out / "gradcam-overlay.png": answer["gradcam"]["overlay"],
    }
    for index, kernel in enumerate(answer["kernels"]["maps"]):
        pictures[out / "kernels" / f"{index:02d}.png"] = kernel["image"]
    for number, layer in enumerate(answer["layers"]):
        folder = out / "layers" / f"{number:02d}-{layer['name']}-{layer['kind']}"
        for channel, picture in enumerate(layer["maps"]):
            pictures[folder / f"{channel:03d}.png"] = picture["image"]
    for path, url in pictures.items():
        match = _DATA_URL.match(url)
        if match is None:
            raise ValueError(f"{path.name}: the server sent no PNG data URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(match.group(1)))
    summary = _without_images(answer)
    (out / "explain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return len(pictures)


def _without_images(value: Any) -> Any:
    """The answer with every data URL replaced by '<png>' (the files hold the pictures)."""
    if isinstance(value, dict):
        return {key: _without_images(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_images(item) for item in value]
    if isinstance(value, str) and _DATA_URL.match(value):
        return "<png>"
    return value


if __name__ == "__main__":
    sys.exit(main())
