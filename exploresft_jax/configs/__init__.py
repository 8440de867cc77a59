"""Training configurations (ml_collections), importable without the repository's configs/ folder.

`base` documents every knob; each other module is one recipe with `get_config()`: sft / oxa / oxa_mle / curio /
grpo for a TPU slice (`*_tpu`) and for one GPU (`*_gpu`), and `tiny_cpu` (a tiny random model on the synthetic
task, any method, a couple of minutes on 2 CPU cores). The files in the repository's configs/ folder are what
`scripts/train.py --config configs/<name>.py` loads; each returns the recipe of the same name. A config of your
own starts from one of these:

    from exploresft_jax.configs import oxa_tpu

    def get_config():
        c = oxa_tpu.get_config()
        c.optim.lr = 1e-5
        return c
"""

# every recipe module of this package (schema and loader are not recipes)
NAMES = ("base", "tiny_cpu", "sft_tpu", "oxa_tpu", "oxa_mle_tpu", "curio_tpu", "grpo_tpu", "oxa_colab", "oxa_7b_tpu",
         "curio_7b_tpu", "grpo_7b_tpu", "sft_gpu", "oxa_gpu", "curio_gpu", "grpo_gpu", "oxa_7b_gpu", "curio_7b_gpu",
         "grpo_7b_gpu")


def get(name: str):
    """`get_config()` of the recipe `name` (one of NAMES)."""
    import importlib

    if name not in NAMES:
        raise ValueError(f"unknown config {name!r}; expected one of {NAMES}")
    return importlib.import_module(f"exploresft_jax.configs.{name}").get_config()
