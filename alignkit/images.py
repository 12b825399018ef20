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
            if img.mode in _HIGH_DEPTH_GRAY:
                return _gray_to_rgb(img)
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise AlignkitError(f"no image file at {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AlignkitError(f"{path} is not a readable image ({exc.__class__.__name__})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


# PIL's modes for 16-bit grayscale (PNG opens as "I;16", older Pillow as "I") and float images.
# PIL's convert("RGB") clips their values at 255 instead of scaling them: almost all white.
_HIGH_DEPTH_GRAY = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _gray_to_rgb(img) -> Tensor:
    """A 16-bit (or float) grayscale image as (3,H,W) in [0,1], its full depth kept."""
    gray = torch.from_numpy(np.asarray(img).astype(np.float32)) / _HIGH_DEPTH_GRAY[img.mode]
    return gray.clamp_(0, 1).unsqueeze(0).expand(3, -1, -1).contiguous()


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
