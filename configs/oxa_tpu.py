"""OXA (full: Gaussian-selected CE data + unlikelihood on confident wrong self-generated data) for
Qwen2.5-Math-1.5B on a TPU slice, with the release's settings: 128 CE + 128 UL sequences per step, ul_weight 1e-4,
eps 1e-6, lr 2.5e-4, cosine 3% warm-up, 6 epochs. data.train_files is the mixed set written by
scripts/select_oxa.py (loss_type ce / ul).

The recipe is `exploresft_jax/configs/oxa_tpu.py` (settings, sources and measured fit in its docstring); a config
of your own can start from it as this file does.
"""

from exploresft_jax.configs import oxa_tpu


def get_config():
    return oxa_tpu.get_config()
