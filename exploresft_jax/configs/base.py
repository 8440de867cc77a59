"""Base training configuration: every knob, documented. Method files override what they need.

Use: python scripts/train.py --config configs/oxa_tpu.py [--config.optim.lr=1e-5 ...]
"""

from ml_collections import ConfigDict

from exploresft_jax.configs import schema
from exploresft_jax.train.objectives import OBJECTIVES, rows_per_step


def get_config() -> ConfigDict:
    """Every field at its default. The fields, their types, allowed values, defaults and docs are declared once,
    in `exploresft_jax.configs.schema` (`schema.fields_doc()` lists them)."""
    return schema.default_config()


# The OXA release's instruction, appended to every query in its SFT data and its RL prompts (oxa.md 4.3).
OXA_PROMPT_SUFFIX = ("\nLet's reason step by step. Enclose the reasoning process within <think>...</think>, then "
                     "summarize it and present the final answer within \\boxed{} — for example: "
                     "<think>reasoning process here</think> \\boxed{answer here}.")


def gpu_host(c: ConfigDict, gpus: int = 1, rows_per_micro: int = 2) -> ConfigDict:
    """Adapts a TPU-slice config to one host of `gpus` GPUs: FSDP over them (mesh (1, gpus, 1)) and the same global
    batch, accumulated in micro-batches of `rows_per_micro` sequences (rows of packed examples with
    data.packing='examples', whose micro axis then starts at a quarter of the unpacked count and doubles as a step
    needs). GRPO's sampler batches are capped at 256 rows."""
    c.workdir = c.workdir.replace("runs/", "runs/gpu_")
    c.mesh.shape = (1, gpus, 1)
    c.mesh.targets = ("h100", "h200") if gpus == 1 else (f"{gpus}xh100",)
    rl = OBJECTIVES[c.method].rl
    rows = rows_per_step(c)
    if rl:
        c.grpo.sampler_rows = min(c.grpo.sampler_rows, 256)
    if not rl and c.data.packing == "examples":
        c.batch.rows_per_micro = rows_per_micro
        c.batch.micro_batches = max(1, rows // rows_per_micro // 4)
    else:
        c.batch.micro_batches = rows // rows_per_micro
    return c


def one_gpu(c: ConfigDict, rows_per_micro: int = 2) -> ConfigDict:
    """`gpu_host` for one GPU (an H100 80 GB or an H200): a (1, 1, 1) mesh."""
    return gpu_host(c, 1, rows_per_micro)
