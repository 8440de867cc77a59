"""The end-to-end CPU demo: a small base model shipped with the package (pretrained on arithmetic word problems
with a systematic dropped-carry bug), OXA data selection, SFT / OXA / CurioSFT / entropy-regularised SFT from the
same base with validation-swept learning rates, GRPO from each, Pass@k / entropy / style evaluation over several
seeds, and a report that checks the papers' claims.

    from exploresft_jax.demo import DemoSettings, run_demo
    run_demo(DemoSettings.full(), "runs/demo", seeds=[0, 1, 2])     # what `python scripts/demo.py` runs
"""

from exploresft_jax.demo.pipeline import METHODS, DemoSettings, run_demo, sweep

__all__ = ["DemoSettings", "run_demo", "sweep", "METHODS"]
