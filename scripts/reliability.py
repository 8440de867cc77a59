#!/usr/bin/env python
"""Reliability campaigns on the tiny CPU config (the long versions of tests/reliability/).

    python scripts/reliability.py [--methods sft oxa curio grpo] [--signals KILL TERM] [--interrupts 4]
                                  [--malformed] [--workdir runs/reliability] [--seed 0] [--json]

* Interruptions: for each method, one uninterrupted `scripts/train.py` run, then the same command started again
  and again, each time interrupted by SIGKILL (a crash, an OOM kill) or SIGTERM (a spot / preemptible VM's notice,
  SLURM) at a random moment, until `--interrupts` interruptions landed and a last start ran to the end. The final
  HF export must equal the uninterrupted run's bit for bit, and metrics.jsonl must hold each step once with the
  same losses (GRPO: the same rewards, i.e. the same rollouts). SIGTERM must end a run with exit code 0.
* `--malformed`: bad inputs to train.py, score_ppl.py and generate.py; each must exit non-zero with exactly one
  line on stderr naming the problem, no traceback, and no output file left behind.
Prints one table per campaign; `--json` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" / "tiny_cpu.py")]
TINY = {  # tests/reliability/common.py's sizes
    "model.custom.hidden_size": 32, "model.custom.intermediate_size": 64, "model.custom.head_dim": 8,
    "tokenizer.train_bpe_vocab": 300, "data.synthetic_size": 64, "data.max_length": 64, "batch.global_size": 8,
    "batch.ul_size": 8, "batch.micro_batches": 2, "optim.lr": 0.01, "checkpoint.keep": 3,
    "checkpoint.async_save": False, "checkpoint.export_dtype": "float32", "log.every_steps": 1, "log.plots": False,
    "log.tensorboard": False, "grpo.sft_warmup_steps": 60, "grpo.prompts_per_step": 4, "grpo.group_size": 4,
    "grpo.max_new_tokens": 24, "grpo.sampler_rows": 16,
}
STEPS = {"sft": 12, "oxa": 12, "curio": 12, "grpo": 6}
COMPARE = {"grpo": ("reward_mean", "response_len_mean", "loss")}


def train_cmd(method: str, workdir: Path) -> list[str]:
    over = dict(TINY, **{"method": method, "workdir": str(workdir), "optim.num_steps": STEPS[method],
                         "checkpoint.every_steps": 2 if method == "grpo" else 3})
    return TRAIN + [f"--config.{k}={v}" for k, v in over.items()]


def _env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    env.pop("XLA_FLAGS", None)
    return env


def _run(cmd, timeout=1800) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    return p.returncode, p.stderr, time.perf_counter() - t0


def _metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _weights(workdir: Path) -> dict[str, np.ndarray]:
    from exploresft_jax.models.hf import SafetensorsFolder

    folder = SafetensorsFolder(workdir / "hf_export")
    return {k: np.asarray(folder[k]) for k in folder.keys()}


def same_run(a: Path, b: Path, method: str) -> tuple[bool, str]:
    """(equal, why not): bit-identical exported weights and each step logged once with equal values."""
    wa, wb = _weights(a), _weights(b)
    if sorted(wa) != sorted(wb):
        return False, "different parameter names"
    for k in wa:
        if not np.array_equal(wa[k], wb[k]):
            return False, f"{k} differs (max |diff| {np.max(np.abs(wa[k] - wb[k])):.3g})"
    ma, mb = _metrics(a), _metrics(b)
    if [r["step"] for r in mb] != [r["step"] for r in ma]:
        return False, f"logged steps {[r['step'] for r in mb]} vs {[r['step'] for r in ma]}"
    for key in COMPARE.get(method, ("loss",)):
        if [r.get(key) for r in ma] != [r.get(key) for r in mb]:
            return False, f"metric {key} differs"
    return True, ""


def interrupt_campaign(method: str, sig: signal.Signals, interrupts: int, work: Path, rng: random.Random) -> dict:
    straight, cut = work / f"{method}_straight", work / f"{method}_{sig.name}"
    shutil.rmtree(cut, ignore_errors=True)
    if not (straight / "hf_export" / "config.json").exists():
        shutil.rmtree(straight, ignore_errors=True)
        rc, err, secs = _run(train_cmd(method, straight))
        if rc != 0:
            raise RuntimeError(f"the uninterrupted {method} run failed: {err.strip().splitlines()[-1:]}")
    else:
        secs = 60.0
    codes, landed, starts, scale = [], 0, 0, 1.0
    while True:
        starts += 1
        if starts > interrupts + 20:
            raise RuntimeError(f"{method}: no completion after {starts - 1} starts")
        proc = subprocess.Popen(train_cmd(method, cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=_env())
        hit = False
        if landed < interrupts:
            try:
                proc.wait(timeout=rng.uniform(0.15, 0.9) * secs * scale)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
                landed += 1
                hit = True
        _, err = proc.communicate(timeout=3600)
        codes.append(proc.returncode)
        if landed < interrupts and not hit and proc.returncode == 0:
            # the run finished before its signal (it ran faster than the uninterrupted one): start over, sooner
            shutil.rmtree(cut, ignore_errors=True)
            codes.append("restart")
            landed, scale = 0, scale * 0.6
            continue
        allowed = (0,) if sig == signal.SIGTERM else (0, -signal.SIGKILL)  # SIGTERM must always exit cleanly
        if proc.returncode not in allowed:
            tail = err.strip().splitlines()[-1:] if err.strip() else []
            return {"method": method, "signal": sig.name, "interrupts": landed, "starts": starts, "exit_codes": codes,
                    "equal": False, "why": f"exit code {proc.returncode}: {tail}"}
        if (cut / "hf_export" / "config.json").exists():
            break
    equal, why = same_run(straight, cut, method)
    return {"method": method, "signal": sig.name, "interrupts": landed, "starts": starts, "exit_codes": codes,
            "equal": equal, "why": why}


# --- malformed inputs -------------------------------------------------------------------------------------------

def malformed_cases(tmp: Path) -> list[tuple[str, list[str], Path | None]]:
    """(name, command, output path that must not exist afterwards)."""
    tmp.mkdir(parents=True, exist_ok=True)
    model = tmp / "model"
    if not (model / "config.json").exists():
        from exploresft_jax.models import hf
        from exploresft_jax.models.qwen2 import Qwen2Config, init_model
        from exploresft_jax.models.tokenizer import train_bpe_tokenizer

        tok = train_bpe_tokenizer(["1 + 2 = 3", "the answer is \\boxed{3}"] * 20, vocab_size=300)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=8, dtype="float32")
        hf.export_hf(init_model(cfg), model, dtype="float32", tokenizer=tok)
    files = {
        "not_json": "{\"prompt\": \"1+1\", \"response\": \"2\"}\nthis is not json\n",
        "missing_response": "{\"prompt\": \"1+1\"}\n",
        "response_not_string": "{\"prompt\": \"1+1\", \"response\": 2}\n",
        "bad_loss_type": "{\"prompt\": \"1+1\", \"response\": \"2\", \"loss_type\": \"xx\"}\n",
        "empty_file": "",
        "array_not_object": "[1, 2, 3]\n",
        "prompt_empty_list": "{\"prompt\": [], \"response\": \"2\"}\n",
        "truncated_line": "{\"prompt\": \"1+1\", \"resp",
        "binary": "\x00\x01\x02\n",
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp / f"{name}.jsonl"
        paths[name].write_text(text)
    py = sys.executable
    cases = []
    for name in ("not_json", "missing_response", "response_not_string", "bad_loss_type", "empty_file",
                 "array_not_object", "prompt_empty_list", "truncated_line"):
        wd = tmp / f"train_{name}"
        shutil.rmtree(wd, ignore_errors=True)
        cases.append((f"train.py {name}", TRAIN + [f"--config.workdir={wd}", "--config.data.synthetic=",
                                                  f"--config.data.train_files=('{paths[name]}',)"], wd / "hf_export"))
    cases.append(("train.py unknown field", TRAIN + ["--config.optim.nope=1"], None))
    cases.append(("train.py bad value", TRAIN + ["--config.model.attention=sometimes"], None))
    for name in ("not_json", "missing_response", "response_not_string", "binary"):
        out = tmp / f"ppl_{name}.out.jsonl"
        cases.append((f"score_ppl.py {name}", [py, str(ROOT / "scripts" / "score_ppl.py"), "--model", str(model),
                                               "--input", str(paths[name]), "--output", str(out)], out))
    for name in ("not_json", "array_not_object", "truncated_line"):
        out = tmp / f"gen_{name}.out.jsonl"
        cases.append((f"generate.py {name}", [py, str(ROOT / "scripts" / "generate.py"), "--model", str(model),
                                              "--input", str(paths[name]), "--output", str(out), "--n", "1",
                                              "--max-new-tokens", "4"], out))
    cases.append(("score_ppl.py missing model", [py, str(ROOT / "scripts" / "score_ppl.py"), "--model",
                                                 str(tmp / "nowhere"), "--input", str(paths["not_json"]),
                                                 "--output", str(tmp / "x.jsonl")], tmp / "x.jsonl"))
    return cases


def malformed_campaign(tmp: Path) -> list[dict]:
    rows = []
    for name, cmd, out in malformed_cases(tmp):
        rc, err, _ = _run(cmd, timeout=600)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        ok = rc != 0 and len(lines) == 1 and "Traceback" not in err and (out is None or not out.exists())
        rows.append({"case": name, "exit_code": rc, "stderr_lines": len(lines), "ok": ok,
                     "message": lines[-1][:140] if lines else ""})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["sft", "oxa", "curio", "grpo"], choices=list(STEPS))
    p.add_argument("--signals", nargs="+", default=["KILL", "TERM"], choices=["KILL", "TERM"])
    p.add_argument("--interrupts", type=int, default=4, help="interruptions per method and signal")
    p.add_argument("--malformed", action="store_true", help="also run the malformed-input campaign")
    p.add_argument("--no-interrupts", action="store_true", help="skip the interruption campaign")
    p.add_argument("--workdir", default="runs/reliability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    report: dict = {"interrupts": [], "malformed": []}
    if not args.no_interrupts:
        for method in args.methods:
            for name in args.signals:
                row = interrupt_campaign(method, getattr(signal, f"SIG{name}"), args.interrupts, work, rng)
                report["interrupts"].append(row)
                if not args.json:
                    print(f"{row['method']:6s} SIG{row['signal'][3:]:5s} interrupts {row['interrupts']} "
                          f"starts {row['starts']:2d} exit codes {row['exit_codes']} -> "
                          f"{'identical' if row['equal'] else 'DIFFERENT: ' + row['why']}", flush=True)
    if args.malformed:
        report["malformed"] = malformed_campaign(work / "malformed")
        if not args.json:
            for r in report["malformed"]:
                print(f"{'ok ' if r['ok'] else 'BAD'} {r['case']:40s} exit {r['exit_code']:3d}  {r['message']}")
    if args.json:
        print(json.dumps(report))
    bad = [r for r in report["interrupts"] if not r["equal"]] + [r for r in report["malformed"] if not r["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
