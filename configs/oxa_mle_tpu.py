"""OXA-MLE, the CE-only ablation of OXA, for Qwen2.5-Math-1.5B on a TPU slice: cross-entropy on the
Gaussian-PPL-selected teacher data alone (the release's `ul_global = 0`, `ul_weight = 0`), with OXA's
per-sample normalisation (each example's token mean, averaged over the step's examples) and otherwise
configs/oxa_tpu.py's settings: 128 CE sequences per step (the SFT baseline's count), lr 2.5e-4, cosine 3%
warm-up, 6 epochs. data.train_files is the CE-only set written by scripts/select_oxa.py without --self
(loss_type ce); UL records in a mixed file are ignored.

The recipe is `exploresft_jax/configs/oxa_mle_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import oxa_mle_tpu


def get_config():
    return oxa_mle_tpu.get_config()
