"""Shared test set-up: offline, CPU, small thread counts, opt-in markers."""

import os
import tempfile
from pathlib import Path

# Tests never touch the network; ultralytics must not look anything up or write to $HOME.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
# One folder for every session (a new temporary one each time was never removed).
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "alignkit-tests-ultralytics"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = Path(os.environ.get("ALIGNKIT_SHARED_WEIGHTS", ROOT.parent / "shared" / "weights"))

_OPT_IN = {"slow": "ALIGNKIT_SLOW", "real_weights": "ALIGNKIT_REAL_WEIGHTS"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, env in _OPT_IN.items():
            if marker in item.keywords and not os.environ.get(env):
                item.add_marker(pytest.mark.skip(reason=f"opt-in: set {env}=1"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def shared_weights() -> Path:
    """The real LAION aesthetic heads in ../shared/weights (data, never copied into the repo)."""
    if not SHARED_WEIGHTS.is_dir():
        pytest.skip(f"real reward heads not found at {SHARED_WEIGHTS} (set ALIGNKIT_SHARED_WEIGHTS)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="module")
def images():
    """Four seeded 32 px images in [0,1], for the reward tests."""
    torch.manual_seed(0)
    return torch.rand(4, 3, 32, 32)


@pytest.fixture(scope="session")
def test_rewards():
    """The `brightness` and `nondiff` rewards of `alignkit.testing`, registered for the session."""
    from alignkit.testing import register_test_rewards, unregister_test_rewards

    register_test_rewards()
    yield
    unregister_test_rewards()


def _tiny_pipeline(kind: str):
    """A session fixture: the test pipeline `kind` of `alignkit.testing.BUILDERS`, saved once."""

    @pytest.fixture(scope="session", name=f"tiny_{kind.replace('-', '_')}")
    def folder(tmp_path_factory) -> Path:
        from alignkit.testing import save_tiny_pipeline

        return save_tiny_pipeline(kind, tmp_path_factory.mktemp("tiny") / kind)

    return folder


# tiny_sd, tiny_sdxl, tiny_sd3, tiny_flux (FLUX.1-dev-like), tiny_flux_schnell: pipeline folders.
tiny_sd, tiny_sdxl, tiny_sd3, tiny_flux, tiny_flux_schnell = map(_tiny_pipeline,
                                                                ["sd", "sdxl", "sd3", "flux", "flux-schnell"])


@pytest.fixture
def fails(capsys):
    """`fails(argv, *fragments)`: `alignkit ARGV`, run in this process, exits non-zero with one
    line on stderr, `error: ...` and no traceback, holding every fragment. Returns that line."""
    from cli_runner import run_cli

    def check(argv: list, *fragments: str) -> str:
        capsys.readouterr()  # only this command's output counts
        code = run_cli(argv)
        err = capsys.readouterr().err.strip()
        assert code != 0, f"exit 0 for {argv}"
        assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
        assert all(fragment in err for fragment in fragments), err
        return err

    return check


@pytest.fixture
def hub(tiny, monkeypatch):
    """huggingface_hub pointed, offline, at the fake hub cache of the test module's `tiny` fixture."""
    from tiny_models import use_hub_cache

    return use_hub_cache(monkeypatch, tiny["cache"])
