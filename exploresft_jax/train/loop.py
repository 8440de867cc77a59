"""The SFT / OXA / CurioSFT run: data, model, sharded state, the step loop, checkpoints, logging, export.

`run(cfg)` is what `scripts/train.py` calls. Running the same command again resumes from the newest checkpoint
in `cfg.workdir` at the same step and data position.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from exploresft_jax import sharding as shd
from exploresft_jax.data import pipeline
from exploresft_jax.data.records import load_records
from exploresft_jax.data.synthetic import arithmetic_records
from exploresft_jax.models import hf
from exploresft_jax.models import qwen2
from exploresft_jax.models.tokenizer import load_tokenizer, train_bpe_tokenizer
from exploresft_jax.train.checkpoint import Checkpointer
from exploresft_jax.train.config import validate
from exploresft_jax.train.logger import MetricsLogger, plot_curves
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.step import StepConfig, init_train_state, make_train_step

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per device, for the MFU estimate (matched against jax's device_kind).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
              "TPU v6 lite": 918e12, "TPU v6e": 918e12, "H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops_per_device(override_tflops: float = 0.0) -> float | None:
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def batch_token_stats(local: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(real tokens, token positions computed, sum of squared segment lengths) of a host batch
    [micro, rows, T]: real tokens are non-padding (segment_ids > 0); computed positions count every row of the
    micro-batches the step does not skip (those holding a counted token)."""
    seg = local["segment_ids"]
    micro, rows, t = seg.shape
    busy = local["loss_mask"].reshape(micro, -1).any(1)
    ids = (np.arange(micro * rows)[:, None] * (t + 1) + seg.reshape(micro * rows, t)).ravel()
    lengths = np.bincount(ids[seg.ravel() > 0])
    return float(np.sum(seg > 0)), float(busy.sum() * rows * t), float(np.sum(lengths.astype(np.float64) ** 2))


def train_flops_per_token(mcfg: qwen2.Qwen2Config, seq_len: int, extra_forwards: int = 0) -> float:
    """6N for forward + backward of the weights, plus causal attention (about 6 * L * T * D), plus 2N per
    extra no-grad forward (CurioSFT's lagged teacher)."""
    n = mcfg.num_params
    attn = 6 * mcfg.num_layers * seq_len * mcfg.num_heads * mcfg.head_dim
    return 6 * n + attn + extra_forwards * (2 * n + attn / 3)


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def build_tokenizer(cfg, records, workdir: Path):
    saved = workdir / "tokenizer"
    if cfg.tokenizer.train_bpe_vocab > 0:
        if (saved / "tokenizer.json").exists():  # resume with the very same tokenizer
            return load_tokenizer(saved)
        corpus = [(r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])) + " " + r["response"]
                  for r in records]
        tok = train_bpe_tokenizer(corpus, vocab_size=cfg.tokenizer.train_bpe_vocab)
        if jax.process_index() == 0:
            tok.save_pretrained(saved)
        return tok
    return load_tokenizer(cfg.tokenizer.path or cfg.model.path)


def build_records(cfg) -> list[dict]:
    if cfg.data.synthetic == "arithmetic":
        n = cfg.data.synthetic_size
        digits = cfg.data.synthetic_digits
        recs = arithmetic_records(n, seed=cfg.seed, digits=digits, bug_rate=cfg.data.synthetic_bug_rate)
        if cfg.method == "oxa" and cfg.batch.ul_size > 0:
            recs += arithmetic_records(n, seed=cfg.seed + 1, negatives=True, digits=digits)
        return recs
    return load_records(list(cfg.data.train_files), cfg.data.format)


def build_model_config(cfg, vocab_size: int) -> qwen2.Qwen2Config:
    overrides = dict(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat_policy=cfg.model.remat_policy,
                     attention=cfg.model.get("attention", "auto"))
    if cfg.model.rope_theta > 0:
        overrides["rope_theta"] = float(cfg.model.rope_theta)
    if cfg.model.max_position_embeddings > 0:
        overrides["max_position_embeddings"] = int(cfg.model.max_position_embeddings)
    if cfg.model.init == "hf":
        return hf.load_hf_config(cfg.model.path, **overrides)[0]
    if cfg.model.preset == "custom":
        c = dict(cfg.model.custom)
        if not c.get("vocab_size"):
            c["vocab_size"] = vocab_size
        return qwen2.Qwen2Config(**c, **overrides)
    return qwen2.PRESETS[cfg.model.preset](**overrides)


def run(cfg) -> dict:
    """Trains per `cfg` (an ml_collections ConfigDict); returns the last logged metrics."""
    validate(cfg)
    d = cfg.distributed
    shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                               d.process_id if d.process_id >= 0 else None, enabled=d.enabled or None)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    mesh = shd.make_mesh(tuple(cfg.mesh.shape))
    rules = shd.TRAIN_RULES

    # --- data ------------------------------------------------------------------------------------------------
    records = build_records(cfg)
    tokenizer = build_tokenizer(cfg, records, workdir)
    tok_kw = dict(max_length=cfg.data.max_length, overlong=cfg.data.overlong, chat_template=cfg.data.chat_template,
                  system_prompt=cfg.data.system_prompt, prompt_suffix=cfg.data.prompt_suffix,
                  max_prompt_length=cfg.data.get("max_prompt_length", 0),
                  max_response_length=cfg.data.get("max_response_length", 0))
    ce_pool = pipeline.tokenize_records([r for r in records if r["loss_type"] == "ce"], tokenizer, **tok_kw)
    pools = [(ce_pool, cfg.batch.global_size, False)]
    if cfg.method == "oxa" and cfg.batch.ul_size > 0:  # ul_size = 0: the CE-only arm (OXA-MLE)
        ul_pool = pipeline.tokenize_records([r for r in records if r["loss_type"] == "ul"], tokenizer, **tok_kw)
        if len(ul_pool) == 0:
            raise ValueError("config.method='oxa' but the data holds no usable UL (loss_type 'ul' / 1) records")
        pools.append((ul_pool, cfg.batch.ul_size, True))
    if len(ce_pool) == 0:
        raise ValueError("no usable CE records after tokenisation and the length filter")
    for name, (pool, _, _) in zip(("ce", "ul"), pools):
        _say(f"data[{name}]: {len(pool)} examples, {pool.num_tokens} tokens; dropped {pool.dropped} "
             f"(over data.max_length={cfg.data.max_length} or no response tokens), truncated {pool.truncated}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_micro = pipeline.rows_per_micro(cfg)
    source = pipeline.StepSource(pools, max_length=cfg.data.max_length, micro_batches=cfg.batch.micro_batches,
                                 pad_id=pad_id, seed=cfg.seed, shuffle=cfg.data.shuffle, packing=cfg.data.packing,
                                 rows_per_micro=per_micro, process_index=jax.process_index(),
                                 process_count=jax.process_count())
    if source.mode == "examples":
        _say(f"data: packing 'examples' into micro-batches of {per_micro} x {cfg.data.max_length}; "
             f"micro-batch buckets {source.micro_buckets} (one compile each, on first use)")
    total_steps = cfg.optim.num_steps or max(1, int(cfg.optim.epochs * source.steps_per_epoch()))

    # --- model and state -------------------------------------------------------------------------------------
    mcfg = build_model_config(cfg, len(tokenizer))
    if mcfg.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size {mcfg.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    if cfg.model.init == "hf":
        model = hf.load_hf_model(cfg.model.path, mesh=mesh, rules=rules, **{
            k: getattr(mcfg, k) for k in ("dtype", "param_dtype", "remat_policy", "attention", "rope_theta",
                                          "max_position_embeddings")})
    else:
        model = qwen2.init_model(mcfg, seed=cfg.seed, mesh=mesh, rules=rules)
    sc = StepConfig.from_config(cfg)
    tx, schedule = make_optimizer(cfg.optim, total_steps)
    graphdef, state = init_train_state(model, tx, sc)
    del model
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    # rows of one micro-batch split over data x fsdp (replicated over an axis that does not divide them); the
    # spec names no micro axis, so it serves every micro-batch bucket
    dp = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    if per_micro % dp:
        _say(f"warning: {per_micro} rows per micro-batch do not split over the {dp} data-parallel devices; "
             f"the rows are replicated (set batch.rows_per_micro / batch.micro_batches to a multiple of {dp})")
    batch_axes = shd.logical_to_spec((None, "act_batch"), rules, mesh, (cfg.batch.micro_batches, per_micro))
    batch_sh = {k: NamedSharding(mesh, batch_axes) for k in pipeline.ROW_KEYS}
    step_fn = make_train_step(graphdef, tx, schedule, sc, state_sh, batch_sh, shd.replicated(mesh))

    # --- resume ------------------------------------------------------------------------------------------------
    ckpt = Checkpointer(workdir / "checkpoints", every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)
    iterator = iter(pipeline.make_dataset(source, num_workers=cfg.data.num_workers))
    start = 0
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(state)
        iterator.set_state(data_state)
        start = int(jax.device_get(state.step))
        _say(f"resumed from {ckpt.directory}/{start} (step {start} of {total_steps})")

    # --- loop ----------------------------------------------------------------------------------------------------
    logger = MetricsLogger(workdir, tensorboard=cfg.log.tensorboard, enabled=jax.process_index() == 0)
    peak = peak_flops_per_device(cfg.log.peak_tflops)
    # model FLOPs of real tokens only: 6N (+2N per extra forward) per token plus causal attention within segments
    flops_tok = train_flops_per_token(mcfg, 0, int(sc.lagged_teacher))
    flops_attn_sq = train_flops_per_token(mcfg, 1, int(sc.lagged_teacher)) - flops_tok  # per token per length
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start, desc=f"{cfg.method}", unit="step", file=sys.stderr,
               disable=jax.process_index() != 0, dynamic_ncols=True)
    last, t0, tokens_since, steps_since = {}, time.perf_counter(), 0.0, 0
    computed_since = flops_since = 0.0
    shapes_seen: set[tuple[int, ...]] = set()
    stop = total_steps if cfg.optim.max_steps_per_run <= 0 else min(total_steps, start + cfg.optim.max_steps_per_run)
    with shd.use_rules(mesh, rules):
        for step in range(start, stop):
            local = next(iterator)
            if local["tokens"].shape not in shapes_seen and shapes_seen:
                _say(f"step {step + 1}: a new batch shape {local['tokens'].shape} (this process): compiling it")
            shapes_seen.add(local["tokens"].shape)
            batch = {k: jax.make_array_from_process_local_data(batch_sh[k], v) for k, v in local.items()}
            state, metrics = step_fn(state, batch)
            steps_since += 1
            real, computed, len_sq = batch_token_stats(local)
            tokens_since += real * jax.process_count()
            computed_since += computed * jax.process_count()
            flops_since += (flops_tok * real + flops_attn_sq * len_sq) * jax.process_count()
            done = step + 1
            final = done == total_steps
            if done % cfg.log.every_steps == 0 or final or done == start + 1:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                dt = time.perf_counter() - t0
                m["tokens_per_sec"] = tokens_since / dt  # real (non-padding) tokens
                m["padding_frac"] = 1.0 - tokens_since / max(computed_since, 1.0)
                if peak:
                    m["mfu"] = flops_since / dt / (peak * jax.device_count())
                logger.log(done, m)
                bar.set_postfix(loss=f"{m['loss']:.4f}", ent=f"{m['entropy']:.3f}")
                if m["skipped"]:
                    _say(f"step {done}: non-finite gradient (norm {m['grad_norm']}); update skipped")
                last, t0, tokens_since, steps_since = m, time.perf_counter(), 0.0, 0
                computed_since = flops_since = 0.0
            bar.update(1)
            if ckpt.should_save(done, final or done == stop):
                ckpt.save(done, state, iterator.get_state(), json.loads(cfg.to_json_best_effort()))
    bar.close()
    ckpt.close()
    logger.close()
    if hasattr(iterator, "close"):  # stops grain worker processes and frees their shared memory
        iterator.close()

    if jax.process_index() == 0 and cfg.log.plots:
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png",
                    {"loss": ["loss", "nll", "ce", "ul", "sed"],
                     "token entropy (nats)": ["entropy", "ul_entropy", "teacher_entropy"],
                     "learning rate": ["lr"]})
    if stop < total_steps:
        _say(f"stopped at step {stop} of {total_steps} (optim.max_steps_per_run); run again to resume")
        return last
    if cfg.checkpoint.export_hf:
        from flax import nnx

        model = nnx.merge(graphdef, state.params)
        hf.export_hf(model, workdir / "hf_export", dtype=cfg.checkpoint.export_dtype, tokenizer=tokenizer)
        _say(f"exported the final model to {workdir / 'hf_export'}")
    return last
