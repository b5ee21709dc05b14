"""Draw a coordinate grid (and a labeller's own boxes) over an evaluation photo, for labelling by eye.

The labelling method (profiler/evalset/README.md): a labeller opens the photo
with this grid, writes boxes in the photo's pixel coordinates, draws them back
over the photo with ``--boxes`` and corrects them until each box is tight.
Only the labeller's own boxes are ever drawn: no model output is shown.

    python profiler/evalset/tools/label_view.py ID [--boxes labels-A.json] [--out view.png] [--zoom 2]
        [--region x1,y1,x2,y2]   (a close look at one part, grid every 10 px)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parents[1]
GRID_PX = 50  # a grid line every 50 photo pixels, labelled with its coordinate
COLOURS = ["#ff0000", "#00c000", "#0060ff", "#ff00ff", "#ff8000", "#00c0c0", "#ffff00"]


def render(item_id: str, boxes: list[dict], zoom: float, region: tuple[int, int, int, int] | None = None
           ) -> Image.Image:
    img = Image.open(HERE / "images" / f"{item_id}.jpg").convert("RGB")
    w, h = img.size
    x0, y0, x1r, y1r = region or (0, 0, w, h)
    img = img.resize((round(w * zoom), round(h * zoom)), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img, "RGBA")
    step = GRID_PX if region is None else GRID_PX // 5  # finer lines inside a zoomed region
    for x in range(0, w + 1, step):
        draw.line([(x * zoom, 0), (x * zoom, h * zoom)], fill=(255, 255, 255, 90), width=1)
        draw.text((x * zoom + 2, y0 * zoom + 2), str(x), fill=(255, 255, 0, 255))
    for y in range(0, h + 1, step):
        draw.line([(0, y * zoom), (w * zoom, y * zoom)], fill=(255, 255, 255, 90), width=1)
        draw.text((x0 * zoom + 2, y * zoom + 2), str(y), fill=(255, 255, 0, 255))
    for i, b in enumerate(boxes):
        x1, y1, x2, y2 = (v * zoom for v in b["box"])
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        draw.text((x1 + 3, y1 + 3), f"{i}:{b['label']}", fill=colour)
    if region is not None:
        img = img.crop(tuple(round(v * zoom) for v in (x0, y0, x1r, y1r)))
    return img


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("id", help="photo id (file stem in profiler/evalset/images)")
    parser.add_argument("--boxes", type=Path, help="a labeller's JSON file: {id: [{label, box, crowd}]}")
    parser.add_argument("--out", type=Path, default=Path("/tmp/label_view.png"))
    parser.add_argument("--zoom", type=float, default=1.5)
    parser.add_argument("--region", help="x1,y1,x2,y2: show only this part (grid every 10 px)")
    args = parser.parse_args()
    boxes = json.loads(args.boxes.read_text())[args.id] if args.boxes else []
    region = tuple(int(v) for v in args.region.split(",")) if args.region else None
    render(args.id, boxes, args.zoom, region).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
