"""Image resampling in PyTorch for the GPU paths, on whatever device the image is.

Shrinking averages over each output pixel's exact footprint (a box filter with
fractional edges, the definition of area resampling: what OpenCV's INTER_AREA
computes when shrinking), so the GPU paths see the images the CPU paths see;
enlarging is bilinear with pixel centres at +0.5 (as OpenCV's INTER_LINEAR).
A resized *image* is an image again: ``resize_image`` rounds to whole 8-bit
levels, as every resizer that returns uint8 does; the networks were checked to
be sensitive to the difference on small crops blown up many times.
"""

from __future__ import annotations

import functools

__all__ = ["area_weights", "resize", "resize_image"]

# Resampling matrices kept per (source side, target side, device): a few MB at most.
_CACHED_WEIGHTS = 64


def area_weights(src: int, dst: int, device):  # -> torch.Tensor [dst, src] float32
    """Output pixel i averages the source span [i, i + 1) x src / dst, each source pixel
    weighted by the length of its overlap with that span (kept per device: images repeat sizes)."""
    return _area_weights(src, dst, str(device))


@functools.lru_cache(maxsize=_CACHED_WEIGHTS)
def _area_weights(src: int, dst: int, device: str):
    import torch

    edges = torch.arange(dst + 1, dtype=torch.float64) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = torch.arange(src, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(hi, pixels + 1) - torch.maximum(lo, pixels)).clamp(min=0)
    return (overlap / overlap.sum(dim=1, keepdim=True)).to(device, torch.float32)


def resize(x, new_h: int, new_w: int):  # [N, C, H, W] float -> [N, C, new_h, new_w]
    """Shrink (both sides) by area averaging; otherwise bilinear."""
    from torch.nn import functional as F

    h, w = x.shape[-2], x.shape[-1]
    if (new_h, new_w) == (h, w):
        return x
    if new_h <= h and new_w <= w:
        return area_weights(h, new_h, x.device) @ x @ area_weights(w, new_w, x.device).T
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def resize_image(image, new_h: int, new_w: int):  # torch uint8 HxWx3 -> float 1x3xHxW, whole levels 0..255
    """An 8-bit HxWx3 image resized to new_h x new_w, as float NCHW rounded to whole levels."""
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    if (new_h, new_w) == (x.shape[-2], x.shape[-1]):
        return x
    return resize(x, new_h, new_w).round_().clamp_(0, 255)
