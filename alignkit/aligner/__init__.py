"""The aligner: a differentiable DDIM sampler over diffusers pipelines, truncated backprop,
LoRA through peft, and the accelerate training loop behind `alignkit train`."""

from alignkit.aligner.config import TrainConfig, load_config
from alignkit.aligner.truncation import TruncationPolicy, parse_truncation

__all__ = ["TrainConfig", "TruncationPolicy", "load_config", "parse_truncation", "train"]


def train(config: TrainConfig):
    """Run a training job (imported lazily: torch, diffusers and accelerate are heavy)."""
    from alignkit.aligner.trainer import train as _train

    return _train(config)
