"""The end-to-end CPU demo: a small base model shipped with the package (pretrained on multi-step arithmetic word
problems, right on the easy tier and dropping carries on the harder ones), a teacher that solves every tier, OXA
data selection, SFT / OXA / OXA-MLE / CurioSFT (and, with --full, entropy-regularised SFT and GRPO) from the same
base with validation-swept learning rates and coefficients, held-out Pass@k and entropy over several seeds, premise
gates, and the papers' claims judged by Welch's t test.

    from exploresft_jax.demo import DemoSettings, run_demo
    run_demo(DemoSettings.default(), "runs/demo", seeds=[0, 1, 2])     # what `python scripts/demo.py` runs
"""

from exploresft_jax.demo.pipeline import DEFAULT_METHODS, METHODS, DemoSettings, run_demo, sweep

__all__ = ["DemoSettings", "run_demo", "sweep", "METHODS", "DEFAULT_METHODS"]
