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
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from exploresft_jax import losses
from exploresft_jax import sharding as shd
from exploresft_jax.data.jsonl import RecordError
from exploresft_jax.data.records import iter_raw
from exploresft_jax.data.synthetic import arithmetic_records
from exploresft_jax.models.tokenizer import load_tokenizer, stop_token_ids, with_suffix
from exploresft_jax.rewards import VerifierConfig, VerifierPool
from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts
from exploresft_jax.sampling.sampler import SampleOutput, cast_weights
from exploresft_jax.sampling.text import decode_rows
from exploresft_jax.train import loop as sft_loop
from exploresft_jax.train import offload
from exploresft_jax.train.config import validate, validate_grpo
from exploresft_jax.train.runtime import Runtime, model_config, say
from exploresft_jax.train.step import StepConfig, forward_rows, make_train_step, weights

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


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size", "vocab_chunk_size", "temperature", "packed"))
def rollout_logprobs(graphdef, params, batch, *, chunk_size: int, temperature: float, vocab_chunk_size: int = 8192,
                     packed: bool = False):
    """Trainer log-probs of the rollout tokens, softmax(z / T)[label]: [micro, rows, T] float32 (forward only).
    packed=False: one right-padded rollout per row (`build_batch`), as the train step sees them
    (`StepConfig.packed`)."""

    def one(mb):
        model = nnx.merge(graphdef, params)
        hidden = forward_rows(model, mb, packed=packed)
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


def sft_warmup(cfg) -> str | None:
    """For random-model toy runs: SFT on the synthetic task first; returns the exported HF folder (None when a
    SIGTERM stopped the warm-up: its checkpoint is saved and the next start resumes it)."""
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
    sub.model.lora.rank = 0  # the warm-up builds the base itself: full fine-tuning of the random model
    if not (Path(sub.workdir) / "hf_export" / "config.json").exists():
        say(f"SFT warm-up: {sub.optim.num_steps} steps on the synthetic task -> {sub.workdir}")
        sft_loop.run(sub)
    export = Path(sub.workdir) / "hf_export"
    return str(export) if (export / "config.json").exists() else None  # None: the warm-up was preempted


def reference_params(state, dtype=None):
    """The KL reference's trained part: a copy of the starting parameters (in `dtype`, the model's compute dtype:
    `sampling.sampler.cast_weights`, exact for its log-probs), or with LoRA zeroed adapters, to be used with the
    state's own frozen base (the base with adapters off: no second copy of the model)."""
    if state.frozen is None:
        return jax.jit(functools.partial(cast_weights, dtype=dtype))(state.params) if dtype else jax.tree.map(
            jnp.copy, state.params)
    return jax.tree.map(jnp.zeros_like, state.params)


def parks_state(cfg, mesh) -> bool:
    """True when the train state and the KL reference wait in host memory outside their phases
    (`grpo.offload_state` and a backend with pinned host memory)."""
    return bool(cfg.grpo.offload_state) and offload.supported(mesh.devices.flat)


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


@dataclasses.dataclass
class Rollouts:
    """One iteration's rollouts: idx [P] prompt indices; out: the sampler's rows [P * G] (a prompt's G samples
    adjacent); texts [P * G] decoded completions; rewards [P * G] float32; stats: the solve rates of the first
    draw (the policy's own, before dynamic resampling); sampled_tokens: every token decoded, resampling included;
    seconds: wall time of sampling and scoring."""

    idx: np.ndarray
    out: SampleOutput
    texts: list[str]
    rewards: np.ndarray
    stats: dict[str, float]
    sampled_tokens: int
    seconds: float = 0.0
    penalty: np.ndarray | None = None  # [P * G] DAPO overlong penalty added to the rewards, when on
    slot_steps: int = 0  # decode steps x decode rows (continuous engine), for the busy-slot fraction
    decoded: int = 0

    def replace_group(self, slot: int, other: Rollouts, src: int, group: int) -> None:
        """Puts group `src` of `other` in place of this batch's group `slot`."""
        dst, frm = slice(slot * group, (slot + 1) * group), slice(src * group, (src + 1) * group)
        self.idx[slot] = other.idx[src]
        self.rewards[dst] = other.rewards[frm]
        for name in ("tokens", "logprobs", "entropy", "lengths", "finish_reason"):
            getattr(self.out, name)[dst] = getattr(other.out, name)[frm]
        self.texts[dst] = other.texts[frm]


class GRPORun:
    """GRPO per a validated config: `run()` loops over iterations, each one `collect_rollouts` (sample with the
    current parameters, score, resample dead groups), `update_batches` (advantages, masks, old / reference
    log-probs), `train_on_rollouts` (mini_batches x ppo_epochs optimizer steps) and `log`."""

    def __init__(self, cfg):
        """Holds the config; `run()` starts the run, sets it up and trains."""
        self.cfg = cfg
        self.rt: Runtime | None = None

    def _setup(self, cfg) -> None:
        g = self.g = cfg.grpo
        self.cfg = cfg
        rt = self.rt
        prompts = load_prompts(cfg)
        self.tokenizer = load_tokenizer(cfg.tokenizer.path or cfg.model.path)
        texts = [with_suffix(p["prompt"], g.prompt_suffix) for p in prompts]  # message lists get it too
        prompt_ids = encode_prompts(self.tokenizer, texts, chat_template=cfg.data.chat_template,
                                    system=g.system_prompt or None)
        keep = [i for i, ids in enumerate(prompt_ids) if len(ids) <= g.max_prompt_length]
        if not keep:
            raise ValueError(f"config.grpo.max_prompt_length={g.max_prompt_length}: every prompt is longer")
        say(f"prompts: {len(keep)} kept, {len(prompts) - len(keep)} dropped (over grpo.max_prompt_length)")
        self.prompts = [prompts[i] for i in keep]
        self.prompt_ids = [prompt_ids[i] for i in keep]
        self.stops = stop_token_ids(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        mcfg = model_config(cfg, len(self.tokenizer))
        self.sc = sc = StepConfig.from_config(cfg)
        self.total = cfg.optim.num_steps or max(1, int(cfg.optim.epochs * len(self.prompts) / g.prompts_per_step))
        self.graphdef, self.state, tx, schedule = rt.train_state(rt.load_model(mcfg), sc, optim_config(cfg),
                                                                 self.total * g.mini_batches * g.ppo_epochs)
        self.park = parks_state(cfg, rt.mesh)
        self.ref_params = reference_params(self.state, mcfg.dtype) if g.kl_coef else None
        if self.park and self.ref_params is not None:  # used once per iteration, by ref_logprobs only
            self.ref_params = offload.to_host(self.ref_params)
        state_sh = jax.tree.map(lambda x: x.sharding, self.state)
        self.rows = g.prompts_per_step * g.group_size
        self.rows_per_step = self.rows // g.mini_batches
        micro = cfg.batch.micro_batches
        spec = shd.logical_to_spec((None, "act_batch"), rt.rules, rt.mesh, (micro, self.rows_per_step // micro))
        self.batch_sh = {k: NamedSharding(rt.mesh, spec) for k in BATCH_KEYS}
        self.step_fn = make_train_step(self.graphdef, tx, schedule, sc, state_sh, self.batch_sh,
                                       shd.replicated(rt.mesh))
        self.sampler = Sampler(graphdef=self.graphdef, params=weights(self.state.params, self.state.frozen),
                               mesh=rt.mesh, rules=sampling_rules(rt.mesh), cache_dtype=mcfg.dtype,
                               max_rows=g.sampler_rows, pad_id=self.pad_id, weight_dtype=mcfg.dtype,
                               kv_pages=g.kv_pages, page_size=g.page_size)
        self.sampler.params = None  # each iteration places the parameters it samples with
        self.samp_cfg = SamplingConfig(temperature=float(g.temperature), top_p=float(g.top_p), top_k=int(g.top_k))
        self.pool = VerifierPool()
        self.vcfg = VerifierConfig(timeout=g.reward_timeout, require_think_close=g.require_think_close,
                                   extraction=g.answer_extraction)
        self.row_len = max(len(p) for p in self.prompt_ids) + g.max_new_tokens

    # --- 1. rollouts ------------------------------------------------------------------------------------------------
    def sample(self, idx: np.ndarray, it: int, stream: int) -> tuple[SampleOutput, list[str]]:
        """G completions of each prompt in `idx` with the sampler's current parameters; the key is a function of
        (seed, iteration, stream) only."""
        out = self.sampler.generate([self.prompt_ids[i] for i in idx], max_new_tokens=self.g.max_new_tokens,
                                    n=self.g.group_size, config=self.samp_cfg, stop_ids=self.stops,
                                    key=jax.random.fold_in(jax.random.fold_in(jax.random.key(self.cfg.seed), it),
                                                           stream))
        texts = decode_rows(self.tokenizer, out)
        return out, texts

    def score(self, idx: np.ndarray, texts: list[str]) -> np.ndarray:
        """[len(texts)] float32 verifier rewards against each row's prompt's answer."""
        golds = [self.prompts[i]["answer"] for i in np.repeat(idx, self.g.group_size)]
        return np.asarray([v.reward for v in self.pool.check_batch(golds, texts, config=self.vcfg)], np.float32)

    def _draw(self, it: int, count: int, stream: int) -> Rollouts:
        idx = prompt_indices(it, count, len(self.prompts), self.cfg.seed, stream=stream)
        out, texts = self.sample(idx, it, stream)
        stats = self.sampler.last_stats  # None for the static engine
        rewards = self.score(idx, texts)
        return Rollouts(idx, out, texts, rewards, group_stats(rewards, self.g.group_size), int(out.lengths.sum()),
                        slot_steps=stats.slot_steps if stats else 0, decoded=stats.decoded if stats else 0)

    def collect_rollouts(self, params, it: int) -> Rollouts:
        """Iteration `it`'s rollouts sampled with `params` (placed once under the sampling rules, dropped after;
        None: the sampler's parameters are already placed): P prompts x G samples, scored; with
        grpo.drop_zero_variance, all-equal groups are replaced by live groups of fresh prompts (up to
        max_resample_rounds)."""
        t0 = time.perf_counter()
        g = self.g
        if params is not None:
            self.sampler.update_params(params)
        ro = self._draw(it, g.prompts_per_step, 0)
        if g.drop_zero_variance:
            for rnd in range(1, g.max_resample_rounds + 1):
                dead = np.where(ro.rewards.reshape(-1, g.group_size).std(1) == 0)[0]
                if len(dead) == 0:
                    break
                extra = self._draw(it, len(dead), rnd)
                ro.sampled_tokens += extra.sampled_tokens
                ro.slot_steps += extra.slot_steps
                ro.decoded += extra.decoded
                live = np.where(extra.rewards.reshape(-1, g.group_size).std(1) > 0)[0]
                for slot, src in zip(dead, live):
                    ro.replace_group(int(slot), extra, int(src), g.group_size)
        # Drop the sampler's parameter copy before the update, so it does not occupy HBM beside the train step's
        # activations; the next iteration places fresh parameters.
        self.sampler.params = None
        ro.seconds = time.perf_counter() - t0
        return ro

    # --- 2. update batches ------------------------------------------------------------------------------------------
    def update_batches(self, state, ro: Rollouts) -> tuple[dict[str, np.ndarray], list[dict[str, jax.Array]]]:
        """(host rows [P * G, row_len], device mini-batches [micro, rows, row_len]) with group advantages,
        groups without signal masked out, and old (off-policy updates) / reference (kl_coef > 0) log-probs of
        the model in `state` (a TrainState)."""
        g, sc = self.g, self.sc
        params = weights(state.params, state.frozen)
        shaped = jnp.asarray(ro.rewards)
        if g.overlong_penalty:  # DAPO's soft overlong punishment, on top of the verifier's reward
            ro.penalty = np.asarray(losses.overlong_penalty(ro.out.lengths, max_len=g.max_new_tokens,
                                                            cache_len=g.overlong_buffer,
                                                            factor=g.overlong_penalty_factor))
            shaped = shaped + ro.penalty
        adv, info = losses.grpo.estimate_advantages(g.advantage_estimator, shaped, g.group_size,
                                                    scale=g.advantage_scale, k=g.passk_k)
        keep = np.ones(self.rows, bool)
        if g.drop_zero_variance:  # groups still all-equal after resampling carry no signal: mask them out
            keep &= ~np.asarray(info["zero_variance"])
        if g.overlong_filter:
            keep &= ro.out.finish_reason != "length"
        row_prompts = [self.prompt_ids[i] for i in np.repeat(ro.idx, g.group_size)]
        host = build_batch(row_prompts, ro.out, np.asarray(adv), keep, self.row_len, self.pad_id)
        micro = self.cfg.batch.micro_batches
        shaped = {k: v.reshape(g.mini_batches, micro, self.rows_per_step // micro, *v.shape[1:])
                  for k, v in host.items()}
        mbs = []
        if g.kl_coef:  # the reference, brought to the device for this phase only when parked
            ref = offload.to_device(self.ref_params) if self.park else self.ref_params
            ref = ref if state.frozen is None else weights(ref, state.frozen)
        for j in range(g.mini_batches):
            mb = {k: jax.make_array_from_process_local_data(self.batch_sh[k], v[j]) for k, v in shaped.items()}
            kw = dict(chunk_size=sc.chunk_size, vocab_chunk_size=sc.vocab_chunk_size,
                      temperature=sc.options.rollout_temperature, packed=sc.packed)
            if not sc.options.on_policy:
                mb["old_logp"] = rollout_logprobs(self.graphdef, params, mb, **kw)
            if g.kl_coef:
                mb["ref_logp"] = rollout_logprobs(self.graphdef, ref, mb, **kw)
            mbs.append(mb)
        return host, mbs

    # --- 3. the update ----------------------------------------------------------------------------------------------
    def train_on_rollouts(self, state, mbs) -> tuple[object, list[dict[str, float]]]:
        """ppo_epochs passes of one optimizer step per mini-batch; (new state, each step's metrics on host)."""
        step_metrics = []
        for _ in range(self.g.ppo_epochs):
            for mb in mbs:
                state, m = self.step_fn(state, mb)
                step_metrics.append(m)
        return state, jax.device_get(step_metrics)

    # --- 4. logging -------------------------------------------------------------------------------------------------
    def log(self, done: int, ro: Rollouts, host, step_metrics, t_train: float) -> dict[str, float]:
        g, out = self.g, ro.out
        m = {k: float(np.mean([s[k] for s in step_metrics])) for k in step_metrics[0]}
        m["logprob_gap"] = float(step_metrics[0]["logprob_gap"])  # first update: the sampling parameters
        lens = out.lengths.astype(np.float64)
        m.update(ro.stats)
        if ro.slot_steps:  # continuous batching: how full the decode batch stayed
            m["decode_slots_busy"] = ro.decoded / ro.slot_steps
        if ro.penalty is not None:
            m["overlong_penalty_mean"] = float(ro.penalty.mean())
        m.update(response_len_mean=float(lens.mean()), response_len_max=float(lens.max()),
                 truncation_rate=float(np.mean(out.finish_reason == "length")),
                 rollout_entropy=float(np.sum(out.entropy * (np.arange(out.tokens.shape[1]) < lens[:, None]))
                                       / max(lens.sum(), 1)),
                 rollout_seconds=ro.seconds, update_seconds=t_train,
                 sample_tokens_per_sec=ro.sampled_tokens / ro.seconds,
                 train_tokens_per_sec=float(np.sum(host["segment_ids"] > 0)) * g.ppo_epochs / t_train)
        self.rt.logger.log(done, m)
        if self.rt.main and (done % g.sample_log_every == 0 or done == self.start + 1):
            first = self.prompts[ro.idx[0]]
            ex = [{"iteration": done, "prompt": first["prompt"], "answer": first["answer"],
                   "completion": ro.texts[j], "reward": float(ro.rewards[j])} for j in range(min(2, g.group_size))]
            with open(self.rt.workdir / "samples.jsonl", "a") as f:
                f.writelines(json.dumps(e) + "\n" for e in ex)
            self.rt.logger.text(done, "samples", "\n\n".join(f"[{e['reward']:.0f}] {e['completion']}" for e in ex))
        self.rt.bar.set_postfix(reward=f"{m['reward_mean']:.3f}", gap=f"{m['logprob_gap']:.1e}")
        return m

    # --- the loop ---------------------------------------------------------------------------------------------------
    def _park(self, state):
        """The train state in host memory (grpo.offload_state), its device buffers dropped with the caller's
        reference; a LoRA run's frozen base stays (the sampler reads it)."""
        if not self.park:
            return state
        return dataclasses.replace(offload.to_host(dataclasses.replace(state, frozen=None)), frozen=state.frozen)

    def _unpark(self, state):
        """The parked train state back in device memory, bit for bit."""
        if not self.park:
            return state
        return dataclasses.replace(offload.to_device(dataclasses.replace(state, frozen=None)), frozen=state.frozen)

    def run(self) -> dict:
        # the run's scaffolding is closed on every exit: bad prompts or a bad model folder included
        with Runtime(self.cfg, loss_spike_check=False) as rt:
            self.rt = rt
            self._setup(self.cfg)
            state, data_state = rt.resume(self.state)
            self.state = None
            self.start = 0 if data_state is None else int(data_state["iteration"])
            if data_state is not None:
                say(f"resumed from {rt.ckpt.directory} at iteration {self.start} of {self.total}")
            rt.open_logger()
            last: dict = {}
            try:
                for it in rt.steps(self.start, self.total, desc="grpo", unit="it"):
                    self.sampler.update_params(weights(state.params, state.frozen))
                    state = self._park(state)  # HBM holds only the sampler's weights and cache meanwhile
                    ro = self.collect_rollouts(None, it)
                    state = self._unpark(state)
                    t1 = time.perf_counter()
                    with shd.use_rules(rt.mesh, rt.rules):
                        host, mbs = self.update_batches(state, ro)
                        state, step_metrics = self.train_on_rollouts(state, mbs)
                    done = it + 1
                    last = self.log(done, ro, host, step_metrics, time.perf_counter() - t1)
                    rt.end_step(done, state, {"iteration": done}, loss=last["loss"],
                                skipped=any(s["skipped"] for s in step_metrics))
            finally:
                self.pool.close()
        rt.plot({"reward": ["reward_mean", f"pass_at_{self.g.group_size}", "solve_all_rate"],
                 "rollout entropy (nats)": ["rollout_entropy", "entropy"],
                 "health": ["logprob_gap", "kl", "clipfrac_high", "clipfrac_low"],
                 "seconds per iteration": ["rollout_seconds", "update_seconds"]})
        if rt.finished():
            rt.export(self.graphdef, state, self.tokenizer)
        return last


def run(cfg) -> dict:
    """GRPO per `cfg` (method 'grpo'); resumes from the newest checkpoint in cfg.workdir. A random model with
    grpo.sft_warmup_steps > 0 is first fine-tuned on the synthetic task (toy runs)."""
    validate(cfg)
    validate_grpo(cfg)
    if cfg.model.init == "random" and cfg.grpo.sft_warmup_steps > 0:
        cfg = copy.deepcopy(cfg)
        cfg.unlock()
        cfg.model.path = sft_warmup(cfg)
        if cfg.model.path is None:
            return {}
        cfg.model.init = "hf"
        cfg.tokenizer.train_bpe_vocab = 0
        cfg.tokenizer.path = str(Path(cfg.workdir) / "sft_warmup" / "tokenizer")
    if cfg.model.init != "hf":
        raise ValueError("config.model.init: GRPO starts from a trained model (model.init='hf'), or a random model "
                         "with grpo.sft_warmup_steps > 0 on the synthetic task")
    return GRPORun(cfg).run()
