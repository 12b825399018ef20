"""YOLO detectors (ultralytics): importing ultralytics safely, loading, saving, letterboxing.

The one home for everything YOLO, used by the `count` reward and the toy world's detector.

Detector format: a folder or hub repo holding `model.yaml` (an ultralytics model YAML with
`nc` and `names`) and `model.safetensors` (the DetectionModel state_dict). Loading rebuilds
`DetectionModel(cfg=yaml)` and loads the tensors through `alignkit.hub.load_state_dict`: no
pickle is read. A stock ultralytics `.pt` also loads, weights-only, against an allow-list of
torch/ultralytics module classes (see `ultralytics_pt_allowlist`).

Letterboxing pads centred with ultralytics' grey (114/255), as its own letterbox does, so
that padding looks like what the detector was trained with.

ultralytics is AGPL-3.0, an optional extra: it is imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.errors import CheckpointError, MissingWeightsError, require
from alignkit.hub import is_hub_id, load_into, load_state_dict, resolve_file
from alignkit.plugins import load_plugins

YAML_FILE = "model.yaml"
WEIGHTS_FILE = "model.safetensors"
# ultralytics' letterbox grey, so padding looks like what the detector was trained with.
PAD_VALUE = 114 / 255


# Detectors that plugins bundle: name -> a function returning its folder or hub id (looked up
# when needed: it may raise MissingWeightsError). The `count` reward uses the default one when
# no `detector` is given.
_DETECTORS: dict[str, Callable[[], str | os.PathLike]] = {}
_DEFAULT: list[str] = []


def register_detector(name: str, locate: Callable[[], str | os.PathLike], default: bool = False) -> None:
    """Register a bundled detector (the toy world's); `default=True` makes it the `count` default."""
    _DETECTORS[name] = locate
    if default:
        _DEFAULT[:] = [name]


def default_detector() -> str | None:
    """The default detector's folder or hub id, None when no plugin registers one (plugins are
    loaded only when none is registered yet). Its own MissingWeightsError when it is absent."""
    if not _DEFAULT:
        load_plugins()
    return str(_DETECTORS[_DEFAULT[0]]()) if _DEFAULT else None


def import_ultralytics():
    """Import ultralytics without network look-ups and without writing to the user's home."""
    # ultralytics reads these at import; set them first unless the user chose otherwise.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(_yolo_config_dir())
    # ultralytics logs to a handler bound to sys.stdout when first imported (its settings
    # banner, warnings); bind it to stderr so that stdout stays data (`alignkit score` JSON),
    # and drop its INFO lines while it imports: the "Creating new Ultralytics Settings" banner.
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            require("ultralytics", extra="count", purpose="the count reward")
            from ultralytics.nn.tasks import DetectionModel
    finally:
        logging.disable(previous)

    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # ultralytics < 8.3.150 kept it in ops
        from ultralytics.utils.ops import non_max_suppression
    _undo_pil_patch()
    return DetectionModel, non_max_suppression


def _yolo_config_dir() -> Path:
    """One folder for ultralytics' settings, under the user's cache, made once and reused (a
    new temporary folder per load was left behind every time)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for folder in (base / "alignkit" / "ultralytics",
                   Path(tempfile.gettempdir()) / f"alignkit-ultralytics-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home: the shared temporary folder, still one per user
            continue
        if os.access(folder, os.W_OK):
            return folder
    return folder


def _undo_pil_patch() -> None:
    """Give PIL.Image.open back its own function.

    At import, ultralytics replaces PIL.Image.open, process-wide, with a wrapper that on any
    unidentified file calls its requirement checker for 'pi-heif' (an auto-install attempt,
    or a ModuleNotFoundError offline). Loading a reward must not change how the rest of the
    program opens images: `alignkit score` on a non-image file then failed with that error.
    This reward never reads files through ultralytics, so nothing here needs the wrapper.
    """
    try:
        from PIL import Image
        from ultralytics.utils import patches
    except ImportError:  # pragma: no cover - other ultralytics versions: nothing to undo
        return
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def _names_from_yaml(cfg: dict, path) -> dict[int, str]:
    names = cfg.get("names")
    nc = cfg.get("nc")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not isinstance(nc, int) or len(names) != nc:
        raise CheckpointError(f"count: {path} must give 'nc' and a 'names' list or mapping of nc class names")
    return {int(k): str(v) for k, v in names.items()}


def locate_detector(detector: str | os.PathLike, filename: str) -> Path:
    """One file of the detector (model.yaml or model.safetensors): from a local folder, or
    from a hub repo id through the HF cache."""
    path = Path(detector).expanduser()
    if not is_hub_id(detector):
        if not path.is_dir():
            raise MissingWeightsError(f"count: detector {path} is not a folder; pass detector=DIR holding "
                                      f"{YAML_FILE} and {WEIGHTS_FILE}")
        return resolve_file("", filename, local=path, what="count detector", option="detector")
    return resolve_file(str(detector), filename, what="count detector", option="detector")


def load_detector(detector: str | os.PathLike):
    """Build the DetectionModel from its YAML and load its safetensors state_dict (or load a
    stock ultralytics .pt, weights-only)."""
    import yaml

    DetectionModel, _ = import_ultralytics()
    if Path(detector).suffix == ".pt":
        return load_ultralytics_pt(Path(detector).expanduser(), DetectionModel)
    yaml_path = locate_detector(detector, YAML_FILE)
    try:
        cfg = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"count: {yaml_path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or "backbone" not in cfg or "head" not in cfg:
        raise CheckpointError(f"count: {yaml_path} is not an ultralytics model YAML (no backbone/head)")
    names = _names_from_yaml(cfg, yaml_path)
    # The YAML is checked before the weights are looked for (or downloaded).
    weights_path = locate_detector(detector, WEIGHTS_FILE)
    try:
        model = DetectionModel(cfg=cfg, verbose=False)
    except Exception as exc:  # ultralytics' parser raises anything from KeyError to RuntimeError
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"count: ultralytics cannot build {yaml_path} ({type(exc).__name__}: {detail})") from None
    load_into(model, load_state_dict(weights_path, what="count detector"), what="count detector")
    model.names = names
    return model.float().eval()


_CONVERT = ("convert it once where you trust the file: python -c \"from ultralytics import YOLO; "
            "from alignkit.detectors import save_detector; save_detector(YOLO('{path}').model, 'DIR')\" "
            "and pass detector=DIR")


def ultralytics_pt_allowlist() -> list:
    """The classes a stock ultralytics .pt may rebuild under `torch.load(weights_only=True)`.

    Such a file pickles the whole DetectionModel (in 'ema' or 'model'), so the unpickler must
    be allowed to create its module classes. Allowed: every nn.Module class of torch.nn and of
    ultralytics.nn (modules and model classes), ultralytics' config namespace, and numpy
    scalars/dtypes (metrics). Objects are rebuilt from plain state (nn.Module.__setstate__),
    no function is called: `getattr` and arbitrary callables stay refused. Checkpoints that
    need more (some pickle bound methods through `getattr`; pre-8.1 ones use old module
    paths) get a one-line refusal that says how to convert them.
    """
    import numpy as np
    import ultralytics.nn.modules as ul_modules
    import ultralytics.nn.tasks as ul_tasks
    from ultralytics.utils import IterableSimpleNamespace

    def module_classes(namespace) -> list:
        return [obj for obj in vars(namespace).values()
                if isinstance(obj, type) and issubclass(obj, torch.nn.Module)]

    numpy_scalar = np.float64(0).__reduce__()[0]
    return [
        *module_classes(torch.nn), *module_classes(ul_modules), *module_classes(ul_tasks),
        IterableSimpleNamespace,
        np.dtype, *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
        (numpy_scalar, "numpy.core.multiarray.scalar"), (numpy_scalar, "numpy._core.multiarray.scalar"),
    ]


def load_ultralytics_pt(path: Path, detection_model_cls):
    """A stock ultralytics checkpoint ({'model' or 'ema': DetectionModel, 'train_args': ...}),
    loaded weights-only against `ultralytics_pt_allowlist()`."""
    if not path.is_file():
        raise MissingWeightsError(f"count: no detector file at {path}; pass detector=FILE.pt or a folder with "
                                  f"{YAML_FILE} and {WEIGHTS_FILE}")
    try:
        ckpt = load_state_dict(path, what="count detector", allow=ultralytics_pt_allowlist())
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {_CONVERT.format(path=path)}") from None
    # Training checkpoints keep the EMA weights in 'ema'; final ones (strip_optimizer) in 'model'.
    model = None
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, detection_model_cls):
        found = type(model).__name__ if model is not None else f"keys {sorted(ckpt)[:6]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"count: {path} holds no ultralytics DetectionModel (found {found}); "
                              f"pass a detection checkpoint or a folder with {YAML_FILE} and {WEIGHTS_FILE}")
    model.names = {int(k): str(v) for k, v in model.names.items()}
    return model.float().eval()


def save_detector(model, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a DetectionModel in the contract format: model.yaml (+ names) and model.safetensors
    (floating-point tensors cast to `dtype` when given: the toy ships fp16)."""
    import yaml
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in dict(model.yaml).items() if k not in ("yaml_file", "channels")}
    names = {int(k): str(v) for k, v in model.names.items()}
    if names == {i: str(i) for i in range(len(names))} and cfg.get("names"):
        # DetectionModel(cfg) sets placeholder names '0', '1', ...; keep the YAML's real ones.
        names = _names_from_yaml(cfg, "the model's YAML")
    cfg["names"] = names
    (folder / YAML_FILE).write_text(yaml.safe_dump(cfg, sort_keys=False))
    # Clone to own storage: safetensors refuses tensors that share memory.
    state = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def letterbox(images: Tensor, stride: int, imgsz: int | None = None) -> Tensor:
    """Letterbox: optionally resize the longest side to `imgsz`, then pad both sides up to a
    multiple of `stride`, centred, with ultralytics' grey (differentiable)."""
    if imgsz is not None:
        h, w = images.shape[-2:]
        scale = imgsz / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = images.shape[-2:]
    pad_h, pad_w = -h % stride, -w % stride
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=PAD_VALUE)
