"""The aligner: a differentiable DDIM sampler over diffusers pipelines, truncated backprop,
LoRA through peft, and the accelerate training loop behind `alignkit train`."""

from alignkit.aligner.config import TrainConfig, load_config

__all__ = ["TrainConfig", "TruncationPolicy", "load_config", "parse_truncation", "train"]


def __getattr__(name: str):
    # Imported on first use: truncation imports torch, and the CLI reads TrainConfig to build
    # its flags (`alignkit --help` should not wait for torch).
    if name in ("TruncationPolicy", "parse_truncation"):
        from alignkit.aligner import truncation

        return getattr(truncation, name)
    raise AttributeError(f"module 'alignkit.aligner' has no attribute '{name}'")


def train(config: TrainConfig):
    """Run a training job (imported lazily: torch, diffusers and accelerate are heavy)."""
    from alignkit.aligner.trainer import train as _train

    return _train(config)
