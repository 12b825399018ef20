"""Real reward models as a user's Hugging Face cache holds them: PickScore_v1 ships only
pytorch_model.bin; a cached model loads without asking the network (even when the network
is down and HF_HUB_OFFLINE is not set); a file that does not load says how to fix it."""

import time

import pytest
import torch
from safetensors.torch import load_file

import tiny_models as tm
from alignkit import hub as hubmod
from alignkit.errors import CheckpointError, MissingWeightsError, first_line
from alignkit.rewards import get_entry, load_reward

PICKSCORE, PROCESSOR, CLIP = "yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", \
    "openai/clip-vit-large-patch14"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
PROMPTS = ["a red circle", "a cat"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubcache")
    folder = tm.save_tiny_clip(root / "clip")
    # PickScore_v1 as on the hub: config.json and pytorch_model.bin, no safetensors.
    torch.save(load_file(str(folder / "model.safetensors")), root / "pytorch_model.bin")
    cache = root / "hub"
    tm.put_in_hub_cache(cache, PICKSCORE, {"config.json": folder / "config.json",
                                           "pytorch_model.bin": root / "pytorch_model.bin"})
    tm.put_in_hub_cache(cache, PROCESSOR, {name: folder / name for name in TOKENIZER_FILES})
    tm.put_in_hub_cache(cache, CLIP, {name: folder / name for name in ("config.json", "model.safetensors",
                                                                       *TOKENIZER_FILES)})
    return {"root": root, "folder": folder, "cache": cache}


@pytest.fixture
def no_network(hub, monkeypatch):
    """HF_HUB_OFFLINE unset, and the hub's address refuses every connection."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hubmod._endpoint_answers.cache_clear()
    yield
    hubmod._endpoint_answers.cache_clear()


def test_pickscore_with_only_pytorch_model_bin_is_available_and_loads(tiny, hub):
    ok, why = get_entry("pickscore").status()
    assert ok, why
    scores = load_reward("pickscore")(torch.rand(2, 3, 32, 32), PROMPTS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_missing_weights_name_both_formats_and_no_absent_file_as_required(tiny, tmp_path, monkeypatch):
    # The repo's config is cached, its weights are not (in either format).
    tm.put_in_hub_cache(tmp_path / "partial", PICKSCORE, {"config.json": tiny["folder"] / "config.json"})
    tm.use_hub_cache(monkeypatch, tmp_path / "partial")
    ok, why = get_entry("pickscore").status()
    assert not ok and f"{PICKSCORE}/model.safetensors or pytorch_model.bin" in why
    with pytest.raises(MissingWeightsError) as info:
        load_reward("pickscore", processor=str(tiny["folder"]))
    message = tm.assert_one_line(info, PICKSCORE, "neither model.safetensors or pytorch_model.bin", "HF_HUB_OFFLINE")
    assert "hf download" in message


@pytest.mark.parametrize("name", ["clip", "pickscore"])
def test_cached_models_load_at_once_without_network_and_without_offline_mode(tiny, no_network, capfd, name):
    capfd.readouterr()
    start = time.monotonic()
    scores = load_reward(name)(torch.rand(2, 3, 32, 32), PROMPTS)
    elapsed = time.monotonic() - start
    assert torch.isfinite(scores).all()
    err = capfd.readouterr().err
    assert "Retry" not in err and "127.0.0.1" not in err, err
    assert elapsed < 15, elapsed  # huggingface_hub's retries alone take ~25 s per file


def test_an_uncached_file_with_the_network_down_is_one_quick_line(tiny, no_network, capfd):
    start = time.monotonic()
    with pytest.raises(MissingWeightsError) as info:
        hubmod.resolve_file("org/absent", "model.safetensors")
    tm.assert_one_line(info, "org/absent/model.safetensors", "cannot be reached", "hf download")
    assert time.monotonic() - start < 15 and "Retry" not in capfd.readouterr().err


def test_a_corrupt_file_says_the_fix_in_whole_sentences(tiny, tmp_path):
    bad = tm.write_corrupt(tmp_path / "pytorch_model.bin", tiny["root"] / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as info:
        hubmod.load_state_dict(bad, what="pickscore model")
    message = tm.assert_one_line(info, "corrupted", "delete it and download it again", "local copy")
    assert message.endswith(hubmod.REDOWNLOAD)
    bad = tm.write_corrupt(tmp_path / "model.safetensors", tiny["folder"] / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        hubmod.load_state_dict(bad, what="clip model")
    assert tm.assert_one_line(info, "not a readable safetensors file").endswith(hubmod.REDOWNLOAD)


def test_first_line_keeps_a_long_sentence_whole():
    long = "x" * 300 + " is wrong. Second sentence here."
    assert first_line(ValueError(long)) == "x" * 300 + " is wrong."


def test_hub_id_or_local_path(tmp_path, monkeypatch):
    """One rule for every loader: what exists or is written as a path is local; `org/name`
    and a bare `name` are hub ids, as huggingface_hub reads them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert hubmod.is_hub_id("org/name") and hubmod.is_hub_id("gpt2")
    assert not hubmod.is_hub_id("here")  # exists: a folder, even without a slash
    assert not hubmod.is_hub_id("./org/name") and not hubmod.is_hub_id("/abs/model")
    assert not hubmod.is_hub_id("~/model") and not hubmod.is_hub_id("a/b/c")


def test_missing_folder_is_said_once_for_every_loader(tmp_path, monkeypatch):
    """A missing path-like folder is "no folder" to the pipeline, CLIP and detector loaders alike."""
    from alignkit.rewards._clip_backbones import split_source
    from alignkit.detectors import locate_detector

    missing = str(tmp_path / "nowhere" / "model")
    with pytest.raises(MissingWeightsError, match="no folder at"):
        hubmod.resolve_pretrained(missing, "model")
    with pytest.raises(MissingWeightsError, match="no folder at"):
        split_source(missing, "clip", "model")
    with pytest.raises(MissingWeightsError, match="not a folder"):
        locate_detector(missing, "model.yaml")
    assert split_source("gpt2", "clip", "model") == ("gpt2", None)
