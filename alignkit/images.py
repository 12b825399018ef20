"""Image files <-> float tensors in [0,1], the currency of every reward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from alignkit.errors import AlignkitError


def load_image(path: str | Path) -> Tensor:
    """An image file as a float (3,H,W) tensor in [0,1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise AlignkitError(f"no image file at {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AlignkitError(f"{path} is not a readable image ({exc.__class__.__name__})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def to_pil(image: Tensor):
    """A (3,H,W) float tensor in [0,1] as a PIL image (rounded to uint8)."""
    from PIL import Image

    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_image(image: Tensor, path: str | Path) -> None:
    to_pil(image).save(path)


def make_grid(rows: list[list[Tensor]], pad: int = 2) -> Tensor:
    """Tile equally sized (3,H,W) images into one (3, rows*H, cols*W) image, white-padded."""
    import torchvision

    flat = [img.detach().float().cpu() for row in rows for img in row]
    return torchvision.utils.make_grid(flat, nrow=len(rows[0]), padding=pad, pad_value=1.0)
