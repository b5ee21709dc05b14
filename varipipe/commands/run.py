"""``varipipe run IMAGE``: run a pipeline on one image in-process (no Ray) and show each stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from varipipe.errors import BadInputError

NAME = "run"
HELP = "run a pipeline on one image in-process and print each stage's output and time"
DESCRIPTION = (
    "Run a pipeline on one image without Ray and print what every stage produced and how long it took. "
    "IMAGE is a file (PNG, JPEG, ...) or the name of a photo bundled with scikit-image "
    "(chelsea, astronaut, coffee, rocket, ...). For a pipeline whose spec says `input: text` "
    "(rag-qa), IMAGE is the request's text instead."
)
# Colour photographs bundled with scikit-image (skimage.data; no download needed).
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="image file, or a bundled sample: " + ", ".join(SAMPLES)
                        + "; the request text for a text-input pipeline")
    parser.add_argument("--pipeline", default="vision-caption", help="pipeline name or spec YAML (default vision-caption)")
    parser.add_argument("--variants", default="", type=parse_variants, metavar="STAGE=NAME,...",
                        help="variant per stage, e.g. detector=yolov3-tiny-608,llm=gemma3-270m (default: each stage's default)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads per stage (default 1)")
    parser.add_argument("--warmup", action="store_true",
                        help="run once untimed first, so times exclude first-call set-up (allocation, caches)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def parse_variants(text: str) -> dict[str, str]:
    """``"a=x,b=y"`` -> ``{"a": "x", "b": "y"}``; argparse reports the ValueError's message."""
    chosen: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, sep, name = item.partition("=")
        if not sep or not stage.strip() or not name.strip():
            raise argparse.ArgumentTypeError(f"expected STAGE=VARIANT, got {item!r}")
        if stage.strip() in chosen:
            raise argparse.ArgumentTypeError(f"stage {stage.strip()!r} given twice")
        chosen[stage.strip()] = name.strip()
    return chosen


def load_image(arg: str):  # -> np.ndarray
    """A file's decoded pixels, or a bundled sample's; ``BadInputError`` naming the problem."""
    from varipipe.pipelines.images import decode_image

    path = Path(arg)
    if path.is_file():
        try:
            return decode_image(path.read_bytes())
        except BadInputError as e:
            raise BadInputError(f"{arg}: {e}", e.status) from e
    if arg in SAMPLES:
        return _sample(arg)
    raise BadInputError(f"{arg!r} is neither an image file nor a bundled sample ({', '.join(SAMPLES)})")


def _sample(name: str):  # -> np.ndarray
    import numpy as np
    import skimage.data

    img = np.asarray(skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)())
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def format_result(result) -> str:  # RunResult -> str
    lines = [f"pipeline {result.pipeline}: {result.total_s * 1000:.1f} ms end to end"]
    for s in result.stages:
        lines.append(f"  {s.stage:<11} {s.variant:<20} {s.seconds * 1000:8.1f} ms  {s.output.summary()}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from varipipe.pipelines.runner import PipelineRunner
    from varipipe.pipelines.variant import Payload
    from varipipe.spec import find_spec

    spec = find_spec(args.pipeline)
    runner = PipelineRunner(spec, args.variants, threads=args.threads)  # unknown names fail before loading
    if spec.input_kind == "text":
        def payload() -> Payload:
            return Payload(request_id="text", text=args.image)
    else:
        image = load_image(args.image)
        request_id = Path(args.image).name

        def payload() -> Payload:
            return Payload(request_id=request_id, image=image.copy())
    with runner:
        if args.warmup:
            runner.run(payload())
        result = runner.run(payload())
    print(json.dumps(result.to_json(), indent=1) if args.json else format_result(result))
    return 0
