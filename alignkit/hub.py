"""Finding and safely loading checkpoints: hub ids, local paths, the HF cache.

Every load here is `safetensors` or `torch.load(weights_only=True)`: a checkpoint from the
internet never executes code. Failures become one-line `AlignkitError`s that say what was
looked for, where, and how to point at a local copy.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterable

import torch

from alignkit.errors import CheckpointError, MissingWeightsError, first_line


def offline() -> bool:
    """True when huggingface_hub is told not to touch the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=4)
def _endpoint_answers(endpoint: str) -> bool:
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=5.0)
    except Exception:  # httpx's transport errors and whatever a proxy may raise: unreachable
        return False
    return True


def hub_reachable() -> bool:
    """Whether the hub answers one quick request (no retries; asked once per process).

    huggingface_hub retries an unreachable endpoint for about 25 s, logging each try; asking
    once first turns that into one line, and lets loaders fall back to the cache at once.
    """
    from huggingface_hub import constants

    return not offline() and _endpoint_answers(constants.ENDPOINT)


def unreachable_reason() -> str:
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set" if offline() else f"the hub ({constants.ENDPOINT}) cannot be reached"


def is_hub_id(name_or_path: str | os.PathLike) -> bool:
    """Whether a model argument names a hub repo rather than a local path.

    Anything that exists locally is a path; so is anything written as one (starting with
    `.`, `/` or `~`, or with more than one `/`). The rest, `org/name` and a bare `name`, is a
    hub id, as `huggingface_hub` and `from_pretrained` read it (bare ids such as `gpt2` are
    valid repos); a missing one is then reported as not in the cache / not on the hub.
    """
    text = str(name_or_path)
    if Path(text).expanduser().exists():
        return False
    return not text.startswith((".", "/", "~")) and text.count("/") <= 1


@contextlib.contextmanager
def quiet_loading():
    """No loading bars and no log warnings from diffusers and transformers while loading:
    the caller has its own progress bar, and raises one line instead of their multi-line
    errors. Restores the libraries' previous settings afterwards."""
    import logging
    import warnings

    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(logging.CRITICAL)
    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (dlogging, tlogging)]
    for lib, _ in bars:
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlogging.set_verbosity(level)
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()


def dropped_components(model_index: dict) -> dict[str, None]:
    """The components a model_index.json lists as [null, null] (SD3 without T5, say), as
    `from_pretrained` keyword arguments: diffusers refuses a pipeline whose required component
    is null unless the caller passes it as None."""
    return {name: None for name, entry in model_index.items()
            if not name.startswith("_") and isinstance(entry, (list, tuple)) and entry and entry[0] is None}


def resolve_file(repo_id: str, filename: str, *, local: str | os.PathLike | None = None,
                 what: str = "checkpoint", option: str = "path") -> Path:
    """Return a local path to `filename`: from `local` (a file, or a folder holding it) if
    given, else from the hub repo `repo_id` through the HF cache: a cached file is used as it
    is, without asking the network (offline mode respected).

    `what` names the thing in messages; `option` is the override the user can pass.
    """
    if local is not None:
        path = Path(local).expanduser()
        if path.is_dir():
            path = path / filename
        if not path.is_file():
            raise MissingWeightsError(f"{what}: no file at {path}; pass an existing file as {option}=PATH")
        return path
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    not_cached = MissingWeightsError(
        f"{what}: {repo_id}/{filename} is not in the Hugging Face cache and {unreachable_reason()}; "
        f"run `hf download {repo_id} {filename}` where there is network, or pass {option}=PATH to a local copy")
    if not hub_reachable():
        raise not_cached
    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError:
        raise not_cached from None
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise MissingWeightsError(
            f"{what}: {repo_id}/{filename} does not exist on the hub ({type(exc).__name__}); "
            f"pass {option}=PATH to a local copy"
        ) from None


def resolve_pretrained(name_or_path: str, what: str, probe: str = "config.json",
                       subfolder: str | None = None) -> str:
    """Check that a `from_pretrained` source exists before a library gives a long traceback.

    A local folder must hold `probe`; a hub id must be in the cache or reachable. Returns the
    argument unchanged, for `from_pretrained`.
    """
    path = Path(name_or_path).expanduser()
    rel = f"{subfolder}/{probe}" if subfolder else probe
    if path.exists():
        if not (path / rel).is_file():
            raise MissingWeightsError(f"{what}: {path} has no {rel}; is it a model folder?")
        return str(path)
    if not is_hub_id(name_or_path):
        raise MissingWeightsError(f"{what}: no folder at {name_or_path}")
    resolve_file(name_or_path, rel, what=what)
    return name_or_path


def load_state_dict(path: str | os.PathLike, what: str = "checkpoint", allow: Iterable = ()) -> dict:
    """Load a checkpoint without ever executing code from it.

    `.safetensors` files load through safetensors; anything else through
    `torch.load(weights_only=True)`, which refuses pickles that ask to call code. `allow`
    names extra classes (or (class, pickled name) pairs) the unpickler may rebuild, for
    formats that pickle whole modules (ultralytics .pt): `torch.serialization.safe_globals`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        from safetensors import SafetensorError

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{what}: {path} is not a readable safetensors file ({first_line(exc)}); "
                                  f"{REDOWNLOAD}") from None
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global: GLOBAL pathlib.Path.touch ...": the pickle names code to call.
        # (Garbage bytes fail as "Unsupported operand": corrupted, not malicious.)
        if "weights only load failed" in str(exc).lower() and "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{what}: refused to load {path}: it is a pickle that asks to run code "
                f"({_unsafe_global(exc)}); only safetensors and plain tensor checkpoints are loaded"
            ) from None
        raise CheckpointError(f"{what}: {path} is corrupted or not a checkpoint ({first_line(exc)}); {REDOWNLOAD}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{what}: {path} is corrupted or not a checkpoint ({first_line(exc)}); {REDOWNLOAD}") from None


def load_into(module: torch.nn.Module, state_dict: dict, what: str, strict: bool = True,
              assign: bool = False) -> None:
    """`load_state_dict` with a one-line error for missing keys or wrong shapes.

    `assign=True` keeps the checkpoint's tensors instead of copying into the module's: the
    way to fill a model built on the meta device without random-initialising it first.
    """
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=strict, assign=assign)
    except RuntimeError as exc:
        detail = [line.strip() for line in str(exc).splitlines() if line.strip()]
        shown = "; ".join(detail[1:3]) if len(detail) > 1 else detail[0]
        raise CheckpointError(f"{what}: checkpoint does not fit the model ({shown})") from None
    if strict and (missing or unexpected):  # pragma: no cover - strict raises above
        raise CheckpointError(f"{what}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")


# What to do about a file that does not load: said in every such message.
REDOWNLOAD = ("delete it and download it again (`hf download REPO FILE` for a hub file), "
              "or point at a good local copy")


def _unsafe_global(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if "unsupported global" in line.lower() or "global" in line.lower():
            # removeprefix, not lstrip (which strips a set of characters: "Unsupported" lost its "Uns");
            # the first sentence names the global, the rest is torch's advice to allow it.
            return line.strip().removeprefix("WeightsUnpickler error: ").split(". ")[0]
    return first_line(exc)
