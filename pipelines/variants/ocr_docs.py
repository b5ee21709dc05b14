"""Documents with known text, rendered by the project, and photos of text from skimage.

The doc-ocr evaluation set: short English documents drawn with Pillow's
bundled font (``ImageFont.load_default(size=...)``, no font file needed), one
text line per line of the document, some of them turned upside down so that the
angle classifier has something to get right. Because the text and every line's
box are known, recognition (character error rate), detection (line recall at
IoU 0.5) and orientation are *measured*. The photos ``skimage.data.text`` and
``skimage.data.page`` (real photographed text, no transcript) add realistic
timing inputs.

The document texts were written for this project (public domain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DOCUMENTS", "RenderedDoc", "render", "rendered_docs", "text_photos", "FONT_SIZE"]

FONT_SIZE = 28  # px: a clear print size at the detector's 960-px side
MARGIN = 40  # px around the text block
LINE_GAP = 18  # px between lines
PAPER, INK = 245, 20  # grey levels of paper and ink

DOCUMENTS: dict[str, tuple[str, ...]] = {
    "invoice": ("INVOICE 2041", "Date: 12 March 2024", "Customer: Northwind Traders",
                "Item: 40 steel brackets", "Total due: 318.50 EUR", "Pay within 30 days"),
    "notice": ("Library closed on Monday", "for the annual inventory.", "Books may be returned",
               "to the box at the side door.", "We reopen on Tuesday at 9 am."),
    "recipe": ("Tomato soup for four", "Fry one onion in butter,", "add six ripe tomatoes",
               "and one litre of stock.", "Simmer for twenty minutes", "then blend until smooth."),
    "meeting": ("Team meeting minutes", "Budget approved for Q3", "New hires start in July",
                "Server upgrade next week", "Next meeting: 4 June"),
    "ticket": ("Boarding pass", "Flight KL 1234 to Oslo", "Gate B17  Seat 14C",
               "Boarding closes 10:35", "Please keep this pass"),
    "warning": ("CAUTION", "High voltage inside", "Do not open this panel", "Authorised staff only"),
}
FLIPPED = frozenset({"ticket", "warning"})  # rendered upside down (rotated 180 degrees)
# Printed small, blurred and noisy, as a poor phone photo of a page: where variants differ.
SMALL = {"small-print": ("Terms and conditions apply to all orders.", "Returns are accepted within 14 days",
                         "if the goods are unused and in their box.", "Refunds take up to 10 working days.",
                         "Contact support@example.com for help.")}
SMALL_FONT_SIZE = 13  # px
NOISE_SIGMA = 12.0  # grey levels of Gaussian noise
NOISE_SEED = 7  # fixed: the documents are the same on every run


@dataclass(frozen=True)
class RenderedDoc:
    """A rendered document: its name, RGB pixels, lines, line boxes (x1, y1, x2, y2), orientation."""

    name: str
    image: np.ndarray
    lines: tuple[str, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    angle: int  # 0 or 180

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _font(size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def render(name: str, lines: tuple[str, ...], angle: int = 0, font_size: int = FONT_SIZE) -> RenderedDoc:
    """Draw ``lines`` black on paper; boxes are the drawn ink's bounds, turned with the page."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    step = font_size + LINE_GAP
    width = 2 * MARGIN + max(int(font.getlength(line)) for line in lines)
    height = 2 * MARGIN + step * len(lines)
    page = Image.new("RGB", (width, height), (PAPER,) * 3)
    draw = ImageDraw.Draw(page)
    boxes = []
    for i, line in enumerate(lines):
        xy = (MARGIN, MARGIN + i * step)
        draw.text(xy, line, fill=(INK,) * 3, font=font)
        boxes.append(tuple(float(v) for v in draw.textbbox(xy, line, font=font)))
    if angle == 180:
        page = page.rotate(180)
        boxes = [(width - x2, height - y2, width - x1, height - y1) for x1, y1, x2, y2 in boxes]
    return RenderedDoc(name, np.asarray(page, dtype=np.uint8).copy(), lines, tuple(boxes), angle)  # type: ignore[arg-type]


def degrade(doc: RenderedDoc, sigma: float = NOISE_SIGMA, seed: int = NOISE_SEED) -> RenderedDoc:
    """The document blurred (half-size and back) with Gaussian noise: same text and boxes."""
    import cv2

    h, w = doc.image.shape[:2]
    blurred = cv2.resize(cv2.resize(doc.image, (w // 2, h // 2), interpolation=cv2.INTER_AREA), (w, h))
    noise = np.random.default_rng(seed).normal(0.0, sigma, blurred.shape)
    image = np.clip(blurred.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return RenderedDoc(doc.name, image, doc.lines, doc.boxes, doc.angle)


def rendered_docs() -> list[RenderedDoc]:
    """Every document of ``DOCUMENTS`` (``FLIPPED`` upside down), then the degraded small print."""
    docs = [render(n, lines, 180 if n in FLIPPED else 0) for n, lines in DOCUMENTS.items()]
    return docs + [degrade(render(n, lines, 0, SMALL_FONT_SIZE)) for n, lines in SMALL.items()]


def text_photos() -> list[tuple[str, np.ndarray]]:
    """skimage.data's photographs of text (greyscale, stacked to RGB): no transcript."""
    import skimage.data

    out = []
    for name in ("text", "page"):
        img = np.asarray(getattr(skimage.data, name)())
        out.append((f"photo-{name}", np.ascontiguousarray(np.stack([img] * 3, axis=-1).astype(np.uint8))))
    return out
