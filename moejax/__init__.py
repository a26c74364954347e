"""moejax: Mixture-of-Experts routing research in JAX/Flax."""

__version__ = "0.1.0"
