"""alignkit: align text-to-image diffusion models to differentiable rewards."""

__version__ = "0.1.0"
