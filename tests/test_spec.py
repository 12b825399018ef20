import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.rewards import Reward, SpecError, parse_spec
from alignkit.rewards.base import InputError, check_inputs, resize_longest_pad, resize_shortest_crop
from alignkit.rewards.spec import CombinedReward


def test_parse_spec():
    assert parse_spec("hps+aesthetic:0.5") == [("hps", 1.0), ("aesthetic", 0.5)]
    assert parse_spec(" clip : 2 + compress:-0.1") == [("clip", 2.0), ("compress", -0.1)]


@pytest.mark.parametrize("bad", ["", "hps+", "+hps", "hps:abc", ":0.5", "hps:-inf", "hps:nan", "hps+hps", "h ps"])
def test_malformed_specs_raise_one_line(bad):
    with pytest.raises(SpecError) as info:
        parse_spec(bad)
    assert "\n" not in str(info.value)


class Mean(Reward):
    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class Red(Reward):
    def score(self, images, prompts):
        return images[:, 0].mean(dim=(1, 2))


def test_combined_reward_weights_and_parts():
    combo = CombinedReward([("mean", Mean(), 1.0), ("red", Red(), 0.5)], "mean+red:0.5").freeze()
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    total, parts = combo.with_parts(images, ["a"] * 3)
    assert set(parts) == {"mean", "red"}
    torch.testing.assert_close(total, parts["mean"] + 0.5 * parts["red"])
    torch.testing.assert_close(combo(images, ["a"] * 3), total)
    total.sum().backward()
    assert images.grad.abs().sum() > 0


def test_check_inputs():
    with pytest.raises(InputError, match="2 images but 1 prompts"):
        check_inputs(torch.rand(2, 3, 4, 4), ["a"])
    with pytest.raises(InputError, match=r"in \[0,1\]"):
        check_inputs(torch.rand(1, 3, 4, 4) * 2 - 1, ["a"])
    with pytest.raises(InputError, match=r"\(B,3,H,W\)"):
        check_inputs(torch.rand(3, 4, 4), ["a"])
    with pytest.raises(InputError, match="dtype"):
        check_inputs(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ["a"])


def test_preprocessing_shapes_and_gradients():
    x = torch.rand(2, 3, 48, 80, requires_grad=True)
    assert resize_shortest_crop(x, 32).shape == (2, 3, 32, 32)
    padded = resize_longest_pad(x, 32)
    assert padded.shape == (2, 3, 32, 32)
    assert padded[..., 0, :].abs().sum() == 0  # padded rows at the top
    padded.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_reward_suggests_closest():
    from alignkit.rewards.registry import get_entry

    with pytest.raises(AlignkitError, match="did you mean 'aesthetic'"):
        get_entry("aesthetc")


def test_combination_checks_its_inputs_once():
    combo = CombinedReward([("mean", Mean(), 1.0), ("red", Red(), 0.5)], "mean+red:0.5").freeze()
    with pytest.raises(InputError, match="2 images but 1 prompts"):
        combo.with_parts(torch.rand(2, 3, 4, 4), ["a"])
    with pytest.raises(InputError, match=r"in \[0,1\]"):
        combo(torch.rand(1, 3, 4, 4) * 2 - 1, ["a"])
