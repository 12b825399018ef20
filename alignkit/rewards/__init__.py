"""Differentiable reward models behind one interface.

    from alignkit.rewards import load_reward
    reward = load_reward("hps+aesthetic:0.5", device="cuda")
    scores = reward(images, prompts)   # images (B,3,H,W) in [0,1] -> (B,), differentiable
"""

from alignkit.rewards.base import CLIP_MEAN, CLIP_STD, InputError, Reward
from alignkit.rewards.registry import REGISTRY, RewardEntry, get_entry, list_entries, register
from alignkit.rewards.spec import (CombinedReward, SpecError, check_reward_options, load_reward, parse_reward_options,
                                   parse_spec)

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "CombinedReward", "InputError", "REGISTRY", "Reward", "RewardEntry",
    "SpecError", "check_reward_options", "get_entry", "list_entries", "load_reward", "parse_reward_options", "parse_spec", "register",
]
