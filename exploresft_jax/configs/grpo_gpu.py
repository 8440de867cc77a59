"""grpo on one NVIDIA GPU (an H100 80 GB or an H200 141 GB): configs/grpo_tpu.py's hyper-parameters and global batch
on a (1, 1, 1) mesh, accumulated in micro-batches of 2 sequences, sampling with 64 decode rows.

Fit (`python scripts/fit.py --config configs/grpo_gpu.py --max-rows`: XLA's GPU compiler for an H100 and an H200 on
any host, no GPU needed), GiB per GPU against the card's 80 GB (74.5 GiB) / 141 GB (131.3 GiB): train step 33.83
(H100: 55% free), reference log-probs 21.76 (the train state, 17.25, resident), and the continuous sampler at 64
rows (the train state and the reference wait in host memory meanwhile): pool prefill 35.37 (H100: 53% free, the
slot caches resident), insert 31.72, decode chunk 34.71 (a row's KV cache of 17,920 entries is 0.48 GiB, plus the
sampler's 2.88 GiB bfloat16 weight copy, one array per layer as the sampler holds it off TPU). 128 rows: pool
prefill 67.41 GiB, 9.5% of an H100 free (under the 10% this project asks for) and 49% of an H200
(`--config.grpo.sampler_rows=128` there). The rollout rows (one right-padded
rollout per row) use cuDNN's fused attention, the prompt prefill the Pallas Triton kernel.

Paged alternative (not the default until timed on a GPU): `--config.grpo.sampler_rows=512
--config.grpo.kv_pages=136369` takes all 512 rollouts in decode slots at once, the KV cache in a pool of 136,369
pages of 16 entries (`scripts/fit.py ... --max-pages` on an H100: 121 rows of the full 17,920 entries, against 64
dense rows): pool prefill 67.06 GiB (10.0% free), insert 62.93, decode 65.92 (its attention reads the pages in
blocks of 2,048 entries: 1.1 GiB of temporaries, against 9.3 when it gathered each row's whole window).
"""

from exploresft_jax.configs.base import one_gpu
from exploresft_jax.configs.grpo_tpu import get_config as tpu_config


def get_config():
    c = one_gpu(tpu_config())
    c.grpo.sampler_rows = 64  # decode slots: 128 leave 9.5% of an H100 free, 49% of an H200
    return c
