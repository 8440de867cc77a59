"""What every training run shares, SFT-family and GRPO alike: start-up, mesh, model, train state, checkpointer,
progress, logging, plots and the final export.

`loop.run` (sft / oxa / curio / entropy_reg / dft) and `grpo_loop.run` are each a `Runtime` plus their own step
loop. A run is resumable: `Runtime.resume` restores the newest readable checkpoint of the workdir, and
`Runtime.steps` drives the loop so that a SIGTERM (spot / preemptible VMs, SLURM) or `optim.max_steps_per_run`
ends it with a checkpoint at a step boundary, and a runaway loss stops it with the last good checkpoint kept.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from tqdm import tqdm

from exploresft_jax import compile_cache
from exploresft_jax import sharding as shd
from exploresft_jax.models import hf, qwen2
from exploresft_jax.models.lora import LoraSpec
from exploresft_jax.train.checkpoint import Checkpointer
from exploresft_jax.train.guards import LossGuard
from exploresft_jax.train.logger import MetricsLogger, plot_curves, truncate_jsonl
from exploresft_jax.train.optim import make_optimizer
from exploresft_jax.train.preemption import PreemptionGuard
from exploresft_jax.train.step import StepConfig, init_train_state, weights

# Fields of Qwen2Config a run may override on top of a checkpoint's own config.json.
_MODEL_OVERRIDES = ("dtype", "param_dtype", "remat_policy", "scan_unroll", "attention", "rope_theta",
                    "max_position_embeddings", "lora")


def say(msg: str) -> None:
    """One line to stderr, from process 0 only."""
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def model_config(cfg, vocab_size: int) -> qwen2.Qwen2Config:
    """The model's configuration from `cfg.model`: the HF checkpoint's config.json (init='hf'), a preset, or the
    `custom` sizes (vocab_size 0 = the tokenizer's), with the run's dtype / remat / attention / RoPE overrides."""
    m = cfg.model
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                     scan_unroll=m.scan_unroll, attention=m.attention, lora=lora_spec(cfg))
    if m.rope_theta > 0:
        overrides["rope_theta"] = float(m.rope_theta)
    if m.max_position_embeddings > 0:
        overrides["max_position_embeddings"] = int(m.max_position_embeddings)
    if m.init == "hf":
        return hf.load_hf_config(m.path, **overrides)[0]
    if m.preset == "custom":
        c = dict(m.custom)
        if not c.get("vocab_size"):
            c["vocab_size"] = vocab_size
        return qwen2.Qwen2Config(**c, **overrides)
    return qwen2.PRESETS[m.preset](**overrides)


def lora_spec(cfg) -> LoraSpec | None:
    """The model's LoRA settings from `cfg.model.lora` (None with rank 0: full fine-tuning)."""
    lo = cfg.model.lora
    if lo.rank <= 0:
        return None
    return LoraSpec(rank=int(lo.rank), alpha=float(lo.alpha), targets=tuple(lo.targets), base_dtype=lo.base_dtype)


class Runtime:
    """One training run's shared machinery. Construct it after the config is validated; use it as a context
    manager so that pending checkpoint writes finish and the logger closes on every exit, errors included.

    Attributes: cfg (the ml_collections config), workdir (Path), mesh ('data', 'fsdp', 'tensor'), rules (the
    training sharding rules), ckpt (Checkpointer of workdir/checkpoints), logger (MetricsLogger, process 0 writes),
    loss_guard (stops a run whose loss ran away; its state is checkpointed), preempted (True once a SIGTERM or a
    multi-host preemption notice ended the run at a step boundary).

    The loop's contract: `for step in rt.steps(...)`: run the step, then `rt.end_step(done, state, data_state,
    loss=..., skipped=...)`, which checks the loss, saves when due (or at once on preemption) and lets `steps`
    end the loop after a preemption save.
    """

    def __init__(self, cfg, *, loss_spike_check: bool = True):
        """Holds the config only: entering the context (`with Runtime(cfg) as rt:`) starts the run."""
        self.cfg = cfg
        self._loss_spike_check = loss_spike_check
        self.logger: MetricsLogger | None = None
        self._loop = None
        self._closed = False

    def start(self) -> Runtime:
        """Starts the run (`__enter__` calls it): joins the distributed job, creates the workdir and its
        config.json, the mesh, the checkpointer and the loss guard, and installs the preemption handler."""
        cfg = self.cfg
        d = cfg.distributed
        shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                                   d.process_id if d.process_id >= 0 else None, enabled=d.enabled or None)
        if (note := compile_cache.guard()) is not None:
            say(note)
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.main = jax.process_index() == 0
        if self.main:
            (self.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
        self.mesh = shd.make_mesh(tuple(cfg.mesh.shape))
        self.rules = shd.TRAIN_RULES
        c = cfg.checkpoint
        self.ckpt = Checkpointer(self.workdir / "checkpoints", every_steps=c.every_steps, keep=c.keep,
                                 async_save=c.async_save)
        g = cfg.guard
        # GRPO's loss is a signed surrogate centred near 0: its runs check only for non-finite steps
        self.loss_guard = LossGuard(max_consecutive_skips=int(g.max_consecutive_skips),
                                    spike_factor=float(g.loss_spike_factor) if self._loss_spike_check else 0.0,
                                    window=int(g.spike_window), min_history=int(g.spike_min_history))
        # From here on a SIGTERM only sets a flag: set-up (data, compiles) finishes, the loop stops at a step
        # boundary with a checkpoint, and the process exits 0 (multi-host: the JAX preemption sync point decides)
        self.preemption = PreemptionGuard().__enter__()
        self.preempted = False
        return self

    def __enter__(self) -> Runtime:
        try:
            return self.start()
        except BaseException:  # a failed start (bad mesh shape, ...): release what it had taken
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # --- model and state ----------------------------------------------------------------------------------------
    def load_model(self, mcfg: qwen2.Qwen2Config) -> qwen2.Qwen2:
        """The model on the mesh: the HF checkpoint at cfg.model.path (init='hf') or a fresh random one."""
        if self.cfg.model.init == "hf":
            return hf.load_hf_model(self.cfg.model.path, mesh=self.mesh, rules=self.rules, seed=self.cfg.seed,
                                    **{k: getattr(mcfg, k) for k in _MODEL_OVERRIDES})
        return qwen2.init_model(mcfg, seed=self.cfg.seed, mesh=self.mesh, rules=self.rules)

    def train_state(self, model, sc: StepConfig, optim_cfg, total_updates: int):
        """(graphdef, state, tx, schedule): the model split once; optimizer state placed like the parameters."""
        tx, schedule = make_optimizer(optim_cfg, total_updates)
        graphdef, state = init_train_state(model, tx, sc)
        return graphdef, state, tx, schedule

    # --- checkpoints --------------------------------------------------------------------------------------------
    def resume(self, state) -> tuple[Any, dict | None]:
        """(state, data_state) of the newest readable checkpoint (an unreadable newest one is moved aside with
        one line, and the one before it is used), or (state, None) for a fresh run. Restores the loss guard and
        drops the metrics / samples lines logged after the restored step (they are about to be logged again)."""
        if self.ckpt.latest_step() is None:
            return state, None
        # with LoRA the checkpoint holds the adapters and their optimizer state; the frozen base is the one just
        # loaded from model.path (recorded in the checkpoint's config)
        restored, saved, _ = self.ckpt.restore(dataclasses.replace(state, frozen=None))
        state = dataclasses.replace(restored, frozen=state.frozen)
        step = int(self.ckpt.restored_step)
        if "pipeline" in saved:  # {"pipeline": loop's own position, "loss_guard": ...}
            self.loss_guard.load_state_dict(saved["loss_guard"])
            saved = saved["pipeline"]
        if self.main:
            for name in ("metrics.jsonl", "samples.jsonl"):
                truncate_jsonl(self.workdir / name, after_step=step)
        return state, saved

    def save(self, step: int, state, data_state: dict) -> None:
        saved = {"pipeline": data_state, "loss_guard": self.loss_guard.state_dict()}
        self.ckpt.save(step, dataclasses.replace(state, frozen=None), saved,
                       json.loads(self.cfg.to_json_best_effort()))

    # --- the loop -----------------------------------------------------------------------------------------------
    def open_logger(self) -> MetricsLogger:
        self.logger = MetricsLogger(self.workdir, tensorboard=self.cfg.log.tensorboard, enabled=self.main)
        return self.logger

    def steps(self, start: int, total: int, *, desc: str, unit: str = "step") -> Iterator[int]:
        self._loop = self._steps(start, total, desc=desc, unit=unit)
        return self._loop

    def _steps(self, start: int, total: int, *, desc: str, unit: str) -> Iterator[int]:
        """Yields the 0-based step indices this invocation runs, start .. min(total, start + max_steps_per_run),
        with a progress bar (`self.bar`, advanced after each step). SIGTERM (or a multi-host preemption notice)
        is caught for the whole loop: the step in flight completes, `end_step` saves it, and the loop ends."""
        per_run = self.cfg.optim.max_steps_per_run
        self.stop = total if per_run <= 0 else min(total, start + per_run)
        self.total = total
        self.bar = tqdm(total=total, initial=start, desc=desc, unit=unit, file=sys.stderr, disable=not self.main,
                        dynamic_ncols=True)
        try:
            for step in range(start, self.stop):
                # a notice during set-up (or a restore): nothing new to save, stop before computing anything.
                # Single-process only: on multi-host the hosts agree through the sync point in end_step.
                if jax.process_count() == 1 and self.preemption.received:
                    self.preempted = True
                    say(f"{self.preemption.reason} before step {step + 1}: exiting; run the same command to resume")
                    break
                yield step
                self.bar.update(1)
                if self.preempted:
                    break
        finally:
            self.bar.close()

    def is_boundary(self, done: int) -> bool:
        """True when `done` steps end this invocation (the run's end or max_steps_per_run)."""
        return done in (self.total, self.stop)

    def end_step(self, done: int, state, data_state: dict, *, loss: float, skipped: bool) -> None:
        """After optimizer step `done`: a runaway loss raises before anything is saved (the newest checkpoint
        stays the last good one); a preemption saves now; otherwise saves every checkpoint.every_steps and at the
        end of this invocation."""
        self.loss_guard.check(done, loss, skipped)
        if self.preemption.should_stop(done) and not self.is_boundary(done):
            self.preempted = True
            say(f"{self.preemption.reason}: saving step {done} and exiting; run the same command to resume")
            self.save(done, state, data_state)
        elif self.ckpt.should_save(done, self.is_boundary(done)):
            self.save(done, state, data_state)

    # --- the end ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Ends the loop, waits for pending checkpoint writes, restores signal handlers, closes the logger; safe to
        call more than once, and after a start that failed part-way (it releases what the start had taken)."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:  # an error left the loop: restore the signal handlers now, not at collection
            self._loop.close()
            self._loop = None
        if hasattr(self, "ckpt"):
            self.ckpt.close()
        if hasattr(self, "preemption"):
            self.preemption.__exit__(None, None, None)  # the previous SIGTERM handler is back
        if self.logger is not None:
            self.logger.close()

    def plot(self, panels: dict[str, list[str]]) -> None:
        if self.main and self.cfg.log.plots:
            plot_curves(self.workdir / "metrics.jsonl", self.workdir / "curves.png", panels)

    def finished(self) -> bool:
        """True when this invocation reached the run's last step (else it says how to resume)."""
        if self.preempted:
            return False
        if self.stop < self.total:
            say(f"stopped at step {self.stop} of {self.total} (optim.max_steps_per_run); run again to resume")
            return False
        return True

    def export(self, graphdef, state, tokenizer) -> None:
        """workdir/hf_export (checkpoint.export_hf): safetensors + config + tokenizer, loadable by transformers
        (with LoRA: the adapters merged into the dequantized base); with LoRA also workdir/hf_adapter, the
        adapters alone in PEFT's format over model.path."""
        if not self.cfg.checkpoint.export_hf:
            return
        model = nnx.merge(graphdef, weights(state.params, state.frozen))
        out = self.workdir / "hf_export"
        hf.export_hf(model, out, dtype=self.cfg.checkpoint.export_dtype, tokenizer=tokenizer)
        say(f"exported the final model to {out}")
        if model.config.lora_spec is not None:
            base = str(Path(self.cfg.model.path).absolute()) if self.cfg.model.path else ""
            adapter = hf.export_peft_adapter(model, self.workdir / "hf_adapter", base_model=base)
            if self.main:  # an adapter folder is usable on its own: scoring, sampling, evaluate.py --model
                tokenizer.save_pretrained(adapter)
            say(f"exported the LoRA adapters (PEFT) to {adapter}")
