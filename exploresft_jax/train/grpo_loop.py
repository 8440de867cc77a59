"""GRPO on the same sharded model: rollouts with the KV-cache sampler, verifier rewards, the shared train step.

One iteration:
  1. take P prompts (a seeded permutation per epoch; the position is checkpointed);
  2. move the policy parameters to the sampling rules and sample G completions per prompt;
  3. score them with the math verifier (a process pool; `</think>` policy by config);
  4. advantages per group (z-score, batch scale or none); with `drop_zero_variance`, groups whose rewards
     are all equal are replaced by fresh prompts (up to `max_resample_rounds`; leftovers are masked out);
  5. reference log-probs from a frozen copy only when kl_coef > 0; old log-probs recomputed by the trainer only
     when the rollouts get more than one update (mini_batches * ppo_epochs > 1), otherwise the ratio is exactly 1;
  6. mini_batches x ppo_epochs optimizer steps with `train_step` (method "grpo"); token or sequence denominators
     come from each optimizer step's whole batch.
Metrics (metrics.jsonl, tensorboard): reward_mean, solve rates, pass@G, zero-variance fraction, lengths and
truncation, rollout entropy, KL, clip fractions, the trainer-vs-sampler log-prob gap (must stay near 0),
sampling and training tokens/s.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from exploresft_jax import losses
from exploresft_jax import sharding as shd
from exploresft_jax.data.records import iter_raw
from exploresft_jax.data.synthetic import arithmetic_records
from exploresft_jax.data.jsonl import RecordError
from exploresft_jax.models import hf, qwen2
from exploresft_jax.models.tokenizer import load_tokenizer, stop_token_ids, with_suffix
from exploresft_jax.train import loop as sft_loop
from exploresft_jax.train.checkpoint import Checkpointer
from exploresft_jax.train.logger import MetricsLogger, plot_curves
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.step import StepConfig, init_train_state, make_train_step

BATCH_KEYS = ("tokens", "labels", "loss_mask", "positions", "segment_ids", "is_negative", "weight", "advantages",
              "old_logp", "sampler_logp", "ref_logp")


def load_prompts(cfg) -> list[dict]:
    """RL prompt records {"prompt", "answer"} from grpo.prompt_files or the synthetic task."""
    if cfg.data.synthetic == "arithmetic":
        return [{"prompt": r["prompt"], "answer": r["answer"]}
                for r in arithmetic_records(cfg.data.synthetic_size, seed=cfg.seed + 7,
                                            digits=cfg.data.synthetic_digits)]
    out = []
    for path in cfg.grpo.prompt_files:
        for where, rec in iter_raw(path):
            prompt, answer = rec.get("prompt"), rec.get("answer")
            if hasattr(prompt, "tolist"):
                prompt = prompt.tolist()
            if not isinstance(prompt, (str, list)) or not prompt:
                raise RecordError(f"{where}: field 'prompt' must be a non-empty string or a list of messages")
            if answer is None or str(answer).strip() == "":
                raise RecordError(f"{where}: missing field 'answer'")
            out.append({"prompt": prompt, "answer": str(answer)})
    if not out:
        raise ValueError("config.grpo.prompt_files: no prompts")
    return out


def prompt_indices(step: int, count: int, num_prompts: int, seed: int, stream: int = 0) -> np.ndarray:
    """Prompts of iteration `step` (stream 0) or of its resampling rounds (stream >= 1): a fresh seeded
    permutation per epoch, walked in order, so the position is a pure function of (seed, step, stream)."""
    start = step * count
    out = []
    while len(out) < count:
        epoch, off = divmod(start, num_prompts)
        perm = np.random.default_rng([seed, stream, epoch]).permutation(num_prompts)
        take = min(count - len(out), num_prompts - off)
        out.extend(perm[off:off + take].tolist())
        start += take
    return np.asarray(out)


def group_stats(rewards: np.ndarray, group: int) -> dict[str, float]:
    r = rewards.reshape(-1, group)
    return {"reward_mean": float(r.mean()), "solve_all_rate": float((r.min(1) > 0.5).mean()),
            f"pass_at_{group}": float((r.max(1) > 0.5).mean()),
            "zero_variance_frac": float((r.std(1) == 0).mean())}


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size", "vocab_chunk_size", "temperature"))
def _rollout_logprobs(graphdef, params, batch, *, chunk_size: int, temperature: float, vocab_chunk_size: int = 8192):
    """Trainer log-probs of the rollout tokens, softmax(z / T)[label]: [micro, rows, T] float32 (forward only)."""

    def one(mb):
        model = nnx.merge(graphdef, params)
        seg = mb["segment_ids"]
        hidden = model(mb["tokens"], mb["positions"], segment_ids=seg, attn_mask=seg > 0)
        stats = losses.chunked_token_stats(hidden, model.head_weight(), mb["labels"], chunk_size=chunk_size,
                                           vocab_chunk_size=vocab_chunk_size, temperature=temperature)
        return stats["tempered_logprob"]

    return jax.lax.map(one, batch)


def build_batch(prompt_ids: list[list[int]], out, advantages: np.ndarray, keep: np.ndarray, row_len: int,
                pad_id: int) -> dict[str, np.ndarray]:
    """Training rows: prompt + completion, right-padded to row_len; loss on completion tokens of kept rows.

    prompt_ids: per row (already repeated per sample). out: the sampler's SampleOutput. keep: [R] bool.
    """
    r = len(prompt_ids)
    b = {k: np.zeros((r, row_len), np.int32) for k in ("tokens", "labels", "loss_mask", "positions", "segment_ids")}
    b["tokens"][:] = pad_id
    for k in ("old_logp", "sampler_logp", "ref_logp"):
        b[k] = np.zeros((r, row_len), np.float32)
    for i in range(r):
        p = np.asarray(prompt_ids[i], np.int32)
        n = int(out.lengths[i])
        seq = np.concatenate([p, out.tokens[i, :n]])
        t = len(seq)
        b["tokens"][i, :t] = seq
        b["labels"][i, :t - 1] = seq[1:]
        b["positions"][i, :t] = np.arange(t)
        b["segment_ids"][i, :t] = 1
        if keep[i] and n > 0:
            # position len(p) - 1 + j predicts completion token j
            b["loss_mask"][i, len(p) - 1:len(p) - 1 + n] = 1
            b["sampler_logp"][i, len(p) - 1:len(p) - 1 + n] = out.logprobs[i, :n]
    b["is_negative"] = np.zeros(r, np.int32)
    b["weight"] = np.ones(r, np.float32)
    b["advantages"] = np.where(keep, advantages, 0.0).astype(np.float32)
    return b


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def _sft_warmup(cfg) -> str:
    """For random-model toy runs: SFT on the synthetic task first; returns the exported HF folder."""
    sub = copy.deepcopy(cfg)
    sub.unlock()
    sub.method = "sft"
    sub.workdir = str(Path(cfg.workdir) / "sft_warmup")
    sub.optim.num_steps = cfg.grpo.sft_warmup_steps
    sub.optim.lr = cfg.grpo.sft_warmup_lr
    sub.optim.schedule = "cosine"
    sub.optim.warmup_steps = min(10, cfg.grpo.sft_warmup_steps // 10)
    sub.data.synthetic_bug_rate = cfg.grpo.sft_warmup_bug_rate
    sub.optim.max_steps_per_run = 0  # the warm-up always completes (it is short by design)
    sub.checkpoint.export_hf = True
    sub.checkpoint.export_dtype = "float32"
    sub.log.plots = False
    if not (Path(sub.workdir) / "hf_export" / "config.json").exists():
        _say(f"SFT warm-up: {sub.optim.num_steps} steps on the synthetic task -> {sub.workdir}")
        sft_loop.run(sub)
    return str(Path(sub.workdir) / "hf_export")


def validate_grpo(cfg) -> None:
    g = cfg.grpo

    def fail(field, why):
        raise ValueError(f"config.grpo.{field}={g[field]!r}: {why}")

    for field in ("prompts_per_step", "group_size", "max_new_tokens", "max_prompt_length", "mini_batches",
                  "ppo_epochs", "sampler_rows"):
        if g[field] < 1:
            fail(field, "must be >= 1")
    if g.group_size < 2:
        fail("group_size", "group-relative advantages need at least 2 completions per prompt")
    if g.aggregation not in losses.grpo.AGGREGATIONS:
        fail("aggregation", f"expected one of {losses.grpo.AGGREGATIONS}")
    if g.kl_estimator not in losses.grpo.KL_ESTIMATORS:
        fail("kl_estimator", f"expected one of {losses.grpo.KL_ESTIMATORS}")
    if g.advantage_scale not in ("group", "batch", "none"):
        fail("advantage_scale", "expected group | batch | none")
    if not 0 < g.top_p <= 1:
        fail("top_p", "must be in (0, 1]")
    if g.temperature <= 0:
        fail("temperature", "must be > 0")
    if g.dual_clip and g.dual_clip <= 1:
        fail("dual_clip", "must be 0 (off) or > 1")
    rows = g.prompts_per_step * g.group_size
    if rows % (g.mini_batches * cfg.batch.micro_batches):
        fail("mini_batches", f"mini_batches x batch.micro_batches must divide the {rows} rollouts per iteration")
    if not cfg.data.synthetic and not g.prompt_files:
        fail("prompt_files", "give RL prompt files (or data.synthetic)")
    for f in g.prompt_files:
        if not Path(f).is_file():
            fail("prompt_files", f"file not found: {f}")
    if cfg.model.init == "random" and g.sft_warmup_steps > 0 and not cfg.data.synthetic:
        fail("sft_warmup_steps", "the warm-up trains on the synthetic task: set data.synthetic")


def step_config(cfg) -> StepConfig:
    """The GRPO train step's static settings from the config (also used by train/fit.py)."""
    g = cfg.grpo
    return StepConfig(method="grpo", chunk_size=cfg.loss.chunk_size, vocab_chunk_size=cfg.loss.vocab_chunk_size,
                      rollout_temperature=float(g.temperature), clip_low=g.clip_low, clip_high=g.clip_high,
                      dual_clip=float(g.dual_clip), kl_coef=float(g.kl_coef), kl_estimator=g.kl_estimator,
                      aggregation=g.aggregation, max_len=int(g.max_new_tokens),
                      on_policy=g.mini_batches * g.ppo_epochs == 1)


def optim_config(cfg):
    """The `optim` section GRPO trains with: grpo.lr > 0 replaces optim.lr."""
    if cfg.grpo.lr <= 0:
        return cfg.optim
    optim = copy.deepcopy(cfg.optim)
    optim.unlock()
    optim.lr = float(cfg.grpo.lr)
    return optim


def sampling_rules(mesh) -> shd.ShardingRules:
    """The rollout sampler's rules: tensor-parallel parameters when the mesh has a tensor axis (each chip then
    holds 1 / tensor of the sampling copy of the weights), else replicated parameters and the batch over every
    device."""
    return shd.sample_rules(tensor_parallel=mesh.shape["tensor"] > 1)


def run(cfg) -> dict:
    """GRPO per `cfg` (method 'grpo'); resumes from the newest checkpoint in cfg.workdir."""
    from exploresft_jax.train.config import validate

    validate(cfg)
    validate_grpo(cfg)
    from exploresft_jax.rewards import VerifierPool, VerifierConfig
    from exploresft_jax.sampling import Sampler, SamplingConfig

    g = cfg.grpo
    d = cfg.distributed
    shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                               d.process_id if d.process_id >= 0 else None, enabled=d.enabled or None)
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.model.init == "random" and g.sft_warmup_steps > 0:
        cfg = copy.deepcopy(cfg)
        cfg.unlock()
        cfg.model.path = _sft_warmup(cfg)
        cfg.model.init = "hf"
        cfg.tokenizer.train_bpe_vocab = 0
        cfg.tokenizer.path = str(Path(cfg.workdir) / "sft_warmup" / "tokenizer")
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    if cfg.model.init != "hf":
        raise ValueError("config.model.init: GRPO starts from a trained model (model.init='hf'), or a random model "
                         "with grpo.sft_warmup_steps > 0 on the synthetic task")

    mesh = shd.make_mesh(tuple(cfg.mesh.shape))
    rules = shd.TRAIN_RULES
    prompts = load_prompts(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer.path or cfg.model.path)
    from exploresft_jax.sampling import encode_prompts

    texts = [with_suffix(p["prompt"], g.prompt_suffix) for p in prompts]  # message lists get it too
    prompt_ids = encode_prompts(tokenizer, texts, chat_template=cfg.data.chat_template,
                                system=g.system_prompt or None)
    keep = [i for i, ids in enumerate(prompt_ids) if len(ids) <= g.max_prompt_length]
    if not keep:
        raise ValueError(f"config.grpo.max_prompt_length={g.max_prompt_length}: every prompt is longer")
    _say(f"prompts: {len(keep)} kept, {len(prompts) - len(keep)} dropped (over grpo.max_prompt_length)")
    prompts = [prompts[i] for i in keep]
    prompt_ids = [prompt_ids[i] for i in keep]
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    mcfg = sft_loop.build_model_config(cfg, len(tokenizer))
    model = hf.load_hf_model(cfg.model.path, mesh=mesh, rules=rules, **{
        k: getattr(mcfg, k) for k in ("dtype", "param_dtype", "remat_policy", "rope_theta",
                                      "max_position_embeddings")})
    sc = step_config(cfg)
    total = cfg.optim.num_steps or max(1, int(cfg.optim.epochs * len(prompts) / g.prompts_per_step))
    tx, schedule = make_optimizer(optim_config(cfg), total * g.mini_batches * g.ppo_epochs)
    graphdef, state = init_train_state(model, tx, sc)
    ref_params = jax.tree.map(jnp.copy, state.params) if g.kl_coef else None
    del model
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    rows = g.prompts_per_step * g.group_size
    rows_per_step = rows // g.mini_batches
    micro = cfg.batch.micro_batches
    spec = shd.logical_to_spec((None, "act_batch"), rules, mesh, (micro, rows_per_step // micro))
    batch_sh = {k: NamedSharding(mesh, spec) for k in BATCH_KEYS}
    step_fn = make_train_step(graphdef, tx, schedule, sc, state_sh, batch_sh, shd.replicated(mesh))
    sampler = Sampler(graphdef=graphdef, params=state.params, mesh=mesh, rules=sampling_rules(mesh),
                      cache_dtype=mcfg.dtype, max_rows=g.sampler_rows, pad_id=pad_id)
    samp_cfg = SamplingConfig(temperature=float(g.temperature), top_p=float(g.top_p), top_k=int(g.top_k))
    pool = VerifierPool()
    vcfg = VerifierConfig(timeout=g.reward_timeout, require_think_close=g.require_think_close,
                          extraction=g.get("answer_extraction", "boxed_only"))
    row_len = max(len(p) for p in prompt_ids) + g.max_new_tokens

    ckpt = Checkpointer(workdir / "checkpoints", every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)
    start = 0
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(state)
        start = int(data_state["iteration"])
        _say(f"resumed from {ckpt.directory} at iteration {start} of {total}")
    logger = MetricsLogger(workdir, tensorboard=cfg.log.tensorboard, enabled=jax.process_index() == 0)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="grpo", unit="it", file=sys.stderr,
               disable=jax.process_index() != 0, dynamic_ncols=True)
    last = {}
    stop = total if cfg.optim.max_steps_per_run <= 0 else min(total, start + cfg.optim.max_steps_per_run)

    def rollout(idx, it, stream):
        sampler.update_params(state.params)
        out = sampler.generate([prompt_ids[i] for i in idx], max_new_tokens=g.max_new_tokens, n=g.group_size,
                               config=samp_cfg, stop_ids=stops,
                               key=jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), it), stream))
        texts = [tokenizer.decode(out.tokens[r, :out.lengths[r]], skip_special_tokens=True)
                 for r in range(len(out.lengths))]
        golds = [prompts[i]["answer"] for i in np.repeat(idx, g.group_size)]
        verdicts = pool.check_batch(golds, texts, config=vcfg)
        rewards = np.asarray([v.reward for v in verdicts], np.float32)
        return out, texts, rewards

    for it in range(start, stop):
        t0 = time.perf_counter()
        idx = prompt_indices(it, g.prompts_per_step, len(prompts), cfg.seed)
        out, texts, rewards = rollout(idx, it, 0)
        stats = group_stats(rewards, g.group_size)  # of the first draw: the policy's own solve rates
        sampled_tokens = int(out.lengths.sum())
        if g.drop_zero_variance:
            for rnd in range(1, g.max_resample_rounds + 1):
                flat = rewards.reshape(-1, g.group_size)
                dead = np.where(flat.std(1) == 0)[0]
                if len(dead) == 0:
                    break
                new_idx = prompt_indices(it, len(dead), len(prompts), cfg.seed, stream=rnd)
                o2, t2, r2 = rollout(new_idx, it, rnd)
                sampled_tokens += int(o2.lengths.sum())
                live = np.where(r2.reshape(-1, g.group_size).std(1) > 0)[0]
                for slot, src in zip(dead, live):  # replace dead groups by live new ones
                    rows_dst = slice(slot * g.group_size, (slot + 1) * g.group_size)
                    rows_src = slice(src * g.group_size, (src + 1) * g.group_size)
                    idx[slot] = new_idx[src]
                    rewards[rows_dst] = r2[rows_src]
                    for name in ("tokens", "logprobs", "entropy", "lengths", "finish_reason"):
                        getattr(out, name)[rows_dst] = getattr(o2, name)[rows_src]
                    texts[rows_dst] = t2[rows_src]
        # Drop the sampler's parameter copy (replicated under the sampling rules) before the update, so it does
        # not occupy HBM beside the train step's activations; the next rollout makes a fresh one.
        sampler.params = None
        t_sample = time.perf_counter() - t0
        adv, info = losses.grpo_advantages(jnp.asarray(rewards), g.group_size, scale=g.advantage_scale,
                                           return_info=True)
        adv = np.asarray(adv)
        keep = np.ones(rows, bool)
        if g.drop_zero_variance:  # groups still all-equal after resampling carry no signal: mask them out
            keep &= ~np.asarray(info["zero_variance"])
        if g.overlong_filter:
            keep &= out.finish_reason != "length"
        row_prompts = [prompt_ids[i] for i in np.repeat(idx, g.group_size)]
        host = build_batch(row_prompts, out, adv, keep, row_len, pad_id)
        shaped = {k: v.reshape(g.mini_batches, micro, rows_per_step // micro, *v.shape[1:]) for k, v in host.items()}

        t1 = time.perf_counter()
        with shd.use_rules(mesh, rules):
            to_dev = lambda b: {k: jax.make_array_from_process_local_data(batch_sh[k], v)  # noqa: E731
                                for k, v in b.items()}
            mbs = [to_dev({k: v[j] for k, v in shaped.items()}) for j in range(g.mini_batches)]
            if not sc.on_policy or g.kl_coef:
                for j, mb in enumerate(mbs):
                    if not sc.on_policy:
                        mb["old_logp"] = _rollout_logprobs(graphdef, state.params, mb, chunk_size=sc.chunk_size,
                                                           vocab_chunk_size=sc.vocab_chunk_size,
                                                           temperature=sc.rollout_temperature)
                    if g.kl_coef:
                        mb["ref_logp"] = _rollout_logprobs(graphdef, ref_params, mb, chunk_size=sc.chunk_size,
                                                           vocab_chunk_size=sc.vocab_chunk_size,
                                                           temperature=sc.rollout_temperature)
            step_metrics = []
            for _ in range(g.ppo_epochs):
                for mb in mbs:
                    state, m = step_fn(state, mb)
                    step_metrics.append(m)
            step_metrics = jax.device_get(step_metrics)
        t_train = time.perf_counter() - t1
        done = it + 1
        m = {k: float(np.mean([s[k] for s in step_metrics])) for k in step_metrics[0]}
        m["logprob_gap"] = float(step_metrics[0]["logprob_gap"])  # first update: the sampling parameters
        lens = out.lengths.astype(np.float64)
        m.update(stats)
        m.update(response_len_mean=float(lens.mean()), response_len_max=float(lens.max()),
                 truncation_rate=float(np.mean(out.finish_reason == "length")),
                 rollout_entropy=float(np.sum(out.entropy * (np.arange(out.tokens.shape[1]) < lens[:, None]))
                                       / max(lens.sum(), 1)),
                 sample_tokens_per_sec=sampled_tokens / t_sample,
                 train_tokens_per_sec=float(np.sum(host["segment_ids"] > 0)) * g.ppo_epochs / t_train)
        logger.log(done, m)
        if jax.process_index() == 0 and (done % g.sample_log_every == 0 or done == start + 1):
            ex = [{"iteration": done, "prompt": prompts[idx[0]]["prompt"], "answer": prompts[idx[0]]["answer"],
                   "completion": texts[j], "reward": float(rewards[j])} for j in range(min(2, g.group_size))]
            with open(workdir / "samples.jsonl", "a") as f:
                f.writelines(json.dumps(e) + "\n" for e in ex)
            logger.text(done, "samples", "\n\n".join(f"[{e['reward']:.0f}] {e['completion']}" for e in ex))
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", gap=f"{m['logprob_gap']:.1e}")
        bar.update(1)
        last = m
        if ckpt.should_save(done, done in (total, stop)):
            ckpt.save(done, state, {"iteration": done}, json.loads(cfg.to_json_best_effort()))
    bar.close()
    ckpt.close()
    logger.close()
    pool.close()
    if jax.process_index() == 0 and cfg.log.plots:
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png",
                    {"reward": ["reward_mean", f"pass_at_{g.group_size}", "solve_all_rate"],
                     "rollout entropy (nats)": ["rollout_entropy", "entropy"],
                     "health": ["logprob_gap", "kl", "clipfrac_high", "clipfrac_low"]})
    if stop == total and cfg.checkpoint.export_hf:
        hf.export_hf(nnx.merge(graphdef, state.params), workdir / "hf_export", dtype=cfg.checkpoint.export_dtype,
                     tokenizer=tokenizer)
    return last
