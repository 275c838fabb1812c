"""Image helpers for reports. Anything a detector flagged is blurred by default.

The content rule of this project: a flagged image never lands on disk or in a report recognisable unless the
caller explicitly passes `blur=False`. Blurring pixelates first (kills edges and fine detail for good) and
then smooths the blocks, so only coarse colour remains.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FLAG_COLOR = (220, 0, 0)


def blur_flagged(image: Image.Image, flagged: bool, radius: float | None = None) -> Image.Image:
    """A blurred copy of `image` if `flagged`, else `image` itself, untouched.

    `radius` is the Gaussian radius in pixels (default: 1/12 of the longer side); the image is first
    pixelated to blocks of that size.
    """
    if not flagged:
        return image
    rgb = image.convert("RGB")
    w, h = rgb.size
    r = radius if radius is not None else max(w, h) / 12
    block = max(1, round(r))
    small = rgb.resize((max(1, w // block), max(1, h // block)), Image.Resampling.BOX)
    pixelated = small.resize((w, h), Image.Resampling.NEAREST)
    return pixelated.filter(ImageFilter.GaussianBlur(r))


def _grid_shape(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(n))
    if cols is None:
        cols = math.ceil(n / rows)  # type: ignore[operator]
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {n} images")
    return max(rows, 1), max(cols, 1)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def image_grid(
    images: Sequence[Image.Image],
    rows: int | None = None,
    cols: int | None = None,
    captions: Sequence[str] | None = None,
    flagged: Sequence[bool] | None = None,
    blur: bool = True,
    pad: int = 4,
    caption_height: int = 18,
    border: int = 4,
) -> Image.Image:
    """Tile `images` (resized to the first one's size) into a rows x cols grid on white.

    Flagged tiles are blurred (unless `blur=False`) and framed in red. With captions, each tile gets a
    `caption_height` strip beneath it. Size: cols*(w+pad)+pad by rows*(h+caption+pad)+pad.
    """
    n = len(images)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    for name, seq in (("captions", captions), ("flagged", flagged)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    rows, cols = _grid_shape(n, rows, cols)
    tw, th = images[0].size
    cap_h = caption_height if captions is not None else 0
    grid = Image.new("RGB", (cols * (tw + pad) + pad, rows * (th + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(max(8, caption_height - 6))

    for i, image in enumerate(images):
        is_flagged = bool(flagged[i]) if flagged is not None else False
        tile = image.convert("RGB")
        if tile.size != (tw, th):
            tile = tile.resize((tw, th), Image.Resampling.BICUBIC)
        if blur:
            tile = blur_flagged(tile, is_flagged)
        x = pad + (i % cols) * (tw + pad)
        y = pad + (i // cols) * (th + cap_h + pad)
        grid.paste(tile, (x, y))
        if is_flagged:
            draw.rectangle((x, y, x + tw - 1, y + th - 1), outline=FLAG_COLOR, width=border)
        if captions is not None:
            draw.text((x + 2, y + th + 2), str(captions[i]), fill=(0, 0, 0), font=font)
    return grid


def save_image(image: Image.Image, path: str | Path, flagged: bool, blur: bool = True) -> Path:
    """Save `image`, blurred if it is flagged (unless the caller opts out with `blur=False`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (blur_flagged(image, flagged) if blur else image).save(path)
    return path
