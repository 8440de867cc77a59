"""The SFT / OXA / CurioSFT / entropy-regularised / DFT run: data, the shared runtime, the step loop.

`run(cfg)` is what `scripts/train.py` calls. Running the same command again resumes from the newest checkpoint
in `cfg.workdir` at the same step and data position.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from jax.sharding import NamedSharding

from exploresft_jax import sharding as shd
from exploresft_jax.data import pipeline
from exploresft_jax.data.records import load_records
from exploresft_jax.data.synthetic import arithmetic_records
from exploresft_jax.models.tokenizer import load_tokenizer, train_bpe_tokenizer
from exploresft_jax.train.config import validate
from exploresft_jax.train.objectives import ul_rows
from exploresft_jax.train.runtime import Runtime, model_config, say
from exploresft_jax.train.step import StepConfig, make_train_step
from exploresft_jax.train.throughput import batch_token_stats, peak_flops_per_device, train_flops_per_token


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
        if ul_rows(cfg) > 0:
            recs += arithmetic_records(n, seed=cfg.seed + 1, negatives=True, digits=digits)
        return recs
    return load_records(list(cfg.data.train_files), cfg.data.format)


def build_pools(cfg, records, tokenizer) -> list[tuple[pipeline.TokenizedSet, int, bool]]:
    """(tokenised pool, examples per step, is_negative) for the CE data and, for OXA with batch.ul_size > 0,
    the UL data."""
    tok_kw = dict(max_length=cfg.data.max_length, overlong=cfg.data.overlong, chat_template=cfg.data.chat_template,
                  system_prompt=cfg.data.system_prompt, prompt_suffix=cfg.data.prompt_suffix,
                  max_prompt_length=cfg.data.max_prompt_length, max_response_length=cfg.data.max_response_length)
    ce_pool = pipeline.tokenize_records([r for r in records if r["loss_type"] == "ce"], tokenizer, **tok_kw)
    pools = [(ce_pool, cfg.batch.global_size, False)]
    if ul_rows(cfg) > 0:  # oxa with ul_size = 0: the CE-only arm (OXA-MLE)
        ul_pool = pipeline.tokenize_records([r for r in records if r["loss_type"] == "ul"], tokenizer, **tok_kw)
        if len(ul_pool) == 0:
            raise ValueError(f"config.method={cfg.method!r} but the data holds no usable UL (loss_type 'ul' / 1) "
                             "records")
        pools.append((ul_pool, cfg.batch.ul_size, True))
    if len(ce_pool) == 0:
        raise ValueError("no usable CE records after tokenisation and the length filter")
    for name, (pool, _, _) in zip(("ce", "ul"), pools):
        say(f"data[{name}]: {len(pool)} examples, {pool.num_tokens} tokens; dropped {pool.dropped} "
            f"(over data.max_length={cfg.data.max_length} or no response tokens), truncated {pool.truncated}")
    return pools


class Throughput:
    """Real tokens/s, padding fraction and MFU between two logged steps (every process's rows counted)."""

    def __init__(self, cfg, mcfg, sc: StepConfig):
        self.peak = peak_flops_per_device(cfg.log.peak_tflops)
        # model FLOPs of real tokens only: 6N (+2N per extra forward) per token plus causal attention in segments
        self.flops_tok = train_flops_per_token(mcfg, 0, int(sc.lagged_teacher))
        self.flops_attn_sq = train_flops_per_token(mcfg, 1, int(sc.lagged_teacher)) - self.flops_tok
        self.reset()

    def reset(self) -> None:
        self.t0, self.tokens, self.computed, self.flops = time.perf_counter(), 0.0, 0.0, 0.0

    def add(self, local) -> None:
        real, computed, len_sq = batch_token_stats(local)
        n = jax.process_count()
        self.tokens += real * n
        self.computed += computed * n
        self.flops += (self.flops_tok * real + self.flops_attn_sq * len_sq) * n

    def metrics(self) -> dict[str, float]:
        dt = time.perf_counter() - self.t0
        m = {"tokens_per_sec": self.tokens / dt, "padding_frac": 1.0 - self.tokens / max(self.computed, 1.0)}
        if self.peak:
            m["mfu"] = self.flops / dt / (self.peak * jax.device_count())
        self.reset()
        return m


def run(cfg) -> dict:
    """Trains per `cfg` (an ml_collections ConfigDict); returns the last logged metrics."""
    validate(cfg)
    with Runtime(cfg) as rt:  # closed on every exit: bad data included, so no thread outlives the error
        return _train(cfg, rt)


def _train(cfg, rt: Runtime) -> dict:
    # --- data ------------------------------------------------------------------------------------------------
    records = build_records(cfg)
    tokenizer = build_tokenizer(cfg, records, rt.workdir)
    pools = build_pools(cfg, records, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_micro = pipeline.rows_per_micro(cfg)
    source = pipeline.StepSource(pools, max_length=cfg.data.max_length, micro_batches=cfg.batch.micro_batches,
                                 pad_id=pad_id, seed=cfg.seed, shuffle=cfg.data.shuffle, packing=cfg.data.packing,
                                 rows_per_micro=per_micro, process_index=jax.process_index(),
                                 process_count=jax.process_count())
    if source.mode == "examples":
        say(f"data: packing 'examples' into micro-batches of {per_micro} x {cfg.data.max_length}; "
            f"micro-batch buckets {source.micro_buckets} (one compile each, on first use)")
    total_steps = cfg.optim.num_steps or max(1, int(cfg.optim.epochs * source.steps_per_epoch()))

    # --- model, state and the step ---------------------------------------------------------------------------
    mcfg = model_config(cfg, len(tokenizer))
    if mcfg.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size {mcfg.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    sc = StepConfig.from_config(cfg)
    graphdef, state, tx, schedule = rt.train_state(rt.load_model(mcfg), sc, cfg.optim, total_steps)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    # rows of one micro-batch split over data x fsdp (replicated over an axis that does not divide them); the
    # spec names no micro axis, so it serves every micro-batch bucket
    mesh = rt.mesh
    dp = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    if per_micro % dp:
        say(f"warning: {per_micro} rows per micro-batch do not split over the {dp} data-parallel devices; "
            f"the rows are replicated (set batch.rows_per_micro / batch.micro_batches to a multiple of {dp})")
    batch_axes = shd.logical_to_spec((None, "act_batch"), rt.rules, mesh, (cfg.batch.micro_batches, per_micro))
    batch_sh = {k: NamedSharding(mesh, batch_axes) for k in pipeline.ROW_KEYS}
    step_fn = make_train_step(graphdef, tx, schedule, sc, state_sh, batch_sh, shd.replicated(mesh))

    # --- resume ----------------------------------------------------------------------------------------------
    iterator = iter(pipeline.make_dataset(source, num_workers=cfg.data.num_workers))
    state, data_state = rt.resume(state)
    start = 0
    if data_state is not None:
        iterator.set_state(data_state)
        start = int(jax.device_get(state.step))
        say(f"resumed from {rt.ckpt.directory}/{start} (step {start} of {total_steps})")

    # --- loop ------------------------------------------------------------------------------------------------
    logger = rt.open_logger()
    speed = Throughput(cfg, mcfg, sc)
    last: dict = {}
    shapes_seen: set[tuple[int, ...]] = set()
    try:
        with shd.use_rules(mesh, rt.rules):
            for step in rt.steps(start, total_steps, desc=cfg.method):
                local = next(iterator)
                if local["tokens"].shape not in shapes_seen and shapes_seen:
                    say(f"step {step + 1}: a new batch shape {local['tokens'].shape} (this process): "
                        "compiling it")
                shapes_seen.add(local["tokens"].shape)
                batch = {k: jax.make_array_from_process_local_data(batch_sh[k], v) for k, v in local.items()}
                state, metrics = step_fn(state, batch)
                speed.add(local)
                done = step + 1
                loss, skipped = (float(x) for x in jax.device_get((metrics["loss"], metrics["skipped"])))
                if skipped:
                    say(f"step {done}: non-finite loss or gradient; update skipped")
                if done % cfg.log.every_steps == 0 or done == total_steps or done == start + 1:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    m.update(speed.metrics())
                    logger.log(done, m)
                    rt.bar.set_postfix(loss=f"{m['loss']:.4f}", ent=f"{m['entropy']:.3f}")
                    last = m
                rt.end_step(done, state, iterator.get_state(), loss=loss, skipped=bool(skipped))
    finally:
        if hasattr(iterator, "close"):  # stops grain worker processes and frees their shared memory
            iterator.close()
    rt.plot({"loss": ["loss", "nll", "ce", "ul", "sed"],
             "token entropy (nats)": ["entropy", "ul_entropy", "teacher_entropy"],
             "learning rate": ["lr"]})
    if rt.finished():
        rt.export(graphdef, state, tokenizer)
    return last
