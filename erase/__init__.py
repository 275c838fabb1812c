"""erase: remove concepts from the weights of diffusion models, and measure what still leaks."""

__version__ = "0.1.0"
