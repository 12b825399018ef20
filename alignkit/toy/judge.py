"""`toy_rules`: the toy world's independent judge for evaluation (registered on import).

Reads every image by the world's own rules (`alignkit.toy.counter`: regions of non-background
pixels, their outline and colour), so it shares nothing with the `count` reward's detector nor
with `toy_clip`. Columns:

- `pixel_count`: objects drawn; `pixel_count_correct`: 1 when that is the prompted number;
- `pixel_shape_correct`, `pixel_colour_correct`: the objects' majority shape / colour is the
  prompted one (0 when nothing is drawn);
- `pixel_ambiguous`: 1 where a careful reader could count otherwise (specks, objects run
  together); reported, not watched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignkit.judges import Judge, register_judge


def _read(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    from alignkit.toy import world
    from alignkit.toy.counter import read_images

    readings = read_images(images)
    specs = [world.parse_prompt(p) for p in prompts]
    columns = {
        "pixel_count": [r.count for r in readings],
        "pixel_count_correct": [r.count == s.count for r, s in zip(readings, specs)],
        "pixel_shape_correct": [r.shape == s.shape for r, s in zip(readings, specs)],
        "pixel_colour_correct": [r.colour == s.colour for r, s in zip(readings, specs)],
        "pixel_ambiguous": [r.ambiguous for r in readings],
    }
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in columns.items()}


def toy_rules(options: dict, device: str) -> Judge:
    if options:
        from alignkit.errors import AlignkitError

        raise AlignkitError(f"--judge toy_rules takes no options, got {sorted(options)}")
    return Judge("toy_rules", _read,
                 {"pixel_count_correct": +1, "pixel_shape_correct": +1, "pixel_colour_correct": +1},
                 {"pixel_count_correct": ("count",)}, "the toy world's rules read from pixels (alignkit.toy.counter)")


register_judge("toy_rules", toy_rules)
