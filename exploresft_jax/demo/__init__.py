"""The end-to-end CPU demo: a tiny base model pretrained on arithmetic word problems, OXA data selection, SFT /
OXA / CurioSFT / entropy-regularised SFT from the same base, Pass@k and entropy evaluation, short GRPO, a report.

    from exploresft_jax.demo import DemoSettings, run_demo
    run_demo(DemoSettings.full(), "runs/demo", seeds=[0])     # what `python scripts/demo.py` runs
"""

from exploresft_jax.demo.pipeline import METHODS, DemoSettings, run_demo

__all__ = ["DemoSettings", "run_demo", "METHODS"]
