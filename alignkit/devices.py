"""Which device to run on: the user's choice checked up front, or CUDA when there is one."""

from __future__ import annotations

from alignkit.errors import AlignkitError


def resolve_device(name: str | None) -> str:
    """`name` if this machine has that device, else one line saying what is missing;
    None means "cuda when present, else cpu"."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AlignkitError(f"--device '{name}' is not a device name (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AlignkitError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AlignkitError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        # mps, xpu, ...: each backend module says whether it is usable here.
        backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise AlignkitError(f"--device {name}: no {device.type} device is available here; use --device cpu")
    return name
