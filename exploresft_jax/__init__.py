"""exploresft_jax: exploration-aware SFT (OXA, CurioSFT) and RLVR for math reasoning models in JAX/Flax."""

__version__ = "0.1.0"
