"""The demo's stages, each a plain function over a work directory (files in, files out).

  data       base corpus, teacher solutions, held-out and RL problems (exploresft_jax.data.word_problems)
  base       a tiny random Qwen2 pretrained on the base corpus (train.loop.run), exported in HF format
  self       the base model's own sampled solutions to the teacher problems, labelled by the verifier
  score      perplexity of teacher and self solutions under the base model (selection.perplexity.score_file,
             what scripts/score_ppl.py runs)
  select     OXA selection (selection.oxa_select.select_files, what scripts/select_oxa.py runs) and a random
             selection of the same size for the baselines
  train      sft (random data), oxa, curio, entropy_reg from the same base with the same steps and batch
  eval       Pass@k (k up to n), sampled-token entropy and the style mix on held-out problems
  grpo       a short GRPO run from every fine-tuned model, evaluated the same way
The base model and the teacher data are shared by all seeds; a seed drives the random selection, the data
order, CurioSFT's and GRPO's randomness and the evaluation samples.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from exploresft_jax.data import word_problems as wp
from exploresft_jax.data.jsonl import write_jsonl

METHODS = ("sft", "oxa", "curio", "entropy_reg")


@dataclasses.dataclass
class DemoSettings:
    """Sizes of every stage. `full()` is the default demo (about 10 minutes on 2 CPU cores); `quick()` is the
    reduced size used by the test."""

    # model and base pretraining
    hidden: int = 96
    layers: int = 3
    heads: int = 6
    kv_heads: int = 2
    bpe_vocab: int = 400
    base_problems: int = 8000
    base_steps: int = 600
    base_lr: float = 5e-3
    base_batch: int = 32
    base_bug_rate: float = 0.3
    # teacher data, self samples, selection
    teacher_problems: int = 400
    self_samples: int = 2
    select_size: int = 256
    num_negatives: int = 256
    # fine-tuning (every method: the same steps, batch and learning rate)
    ft_steps: int = 150
    ft_batch: int = 16
    ft_lr: float = 1e-3
    ul_weight: float = 0.1
    entropy_coef: float = 0.02
    max_length: int = 176
    # evaluation
    eval_problems: int = 64
    eval_samples: int = 16
    eval_temperature: float = 1.0
    max_new_tokens: int = 80
    # GRPO
    grpo_steps: int = 10
    grpo_prompts: int = 8
    grpo_group: int = 8
    grpo_lr: float = 5e-4
    rl_problems: int = 256

    @classmethod
    def full(cls) -> "DemoSettings":
        return cls()

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(hidden=48, layers=2, bpe_vocab=320, base_problems=600, base_steps=120, teacher_problems=48,
                   self_samples=2, select_size=32, num_negatives=32, ft_steps=12, ft_batch=8, eval_problems=8,
                   eval_samples=4, max_new_tokens=80, grpo_steps=2, grpo_prompts=4, grpo_group=4, rl_problems=32)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tiny_config():
    """The tiny_cpu recipe's get_config() (the CPU defaults every demo run starts from)."""
    from exploresft_jax.configs import tiny_cpu

    return tiny_cpu.get_config()


def _base_run_config(s: DemoSettings, workdir: Path, seed: int):
    c = tiny_config()
    c.workdir = str(workdir)
    c.seed = seed
    c.data.max_length = s.max_length
    c.data.synthetic = ""
    c.tokenizer.train_bpe_vocab = 0
    c.log.tensorboard = False
    c.log.plots = False
    c.checkpoint.every_steps = 100_000  # only the final checkpoint: the demo never resumes mid-run
    c.checkpoint.keep = 1
    c.checkpoint.async_save = False
    c.checkpoint.export_dtype = "float32"
    c.log.every_steps = 5
    # sequences are short: one chunk of the loss head over the whole row and vocabulary, one micro-batch
    c.loss.chunk_size = s.max_length
    c.loss.vocab_chunk_size = 512
    c.batch.micro_batches = 1
    return c


# --- data -------------------------------------------------------------------------------------------------------

def make_data(s: DemoSettings, work: Path) -> dict[str, Path]:
    """Writes data/{base,teacher,eval,rl}.jsonl and tokenizer/; returns their paths. Problem sets are disjoint."""
    d = work / "data"
    paths = {k: d / f"{k}.jsonl" for k in ("base", "teacher", "eval", "rl")}
    paths["tokenizer"] = work / "tokenizer"
    if all(p.exists() for p in paths.values()):
        return paths
    evals = wp.problems(s.eval_problems, seed=101)
    seen = {p["prompt"] for p in evals}
    teacher_probs = wp.problems(s.teacher_problems, seed=202, exclude=seen)
    seen |= {p["prompt"] for p in teacher_probs}
    rl = wp.problems(s.rl_problems, seed=303, exclude=seen)
    seen |= {p["prompt"] for p in rl}
    base = wp.base_corpus(s.base_problems, seed=404, bug_rate=s.base_bug_rate, exclude=seen)
    teacher = wp.teacher_solutions(teacher_probs)
    write_jsonl(paths["base"], base)
    write_jsonl(paths["teacher"], teacher)
    write_jsonl(paths["eval"], [{"prompt": p["prompt"], "answer": p["answer"]} for p in evals])
    write_jsonl(paths["rl"], [{"prompt": p["prompt"], "answer": p["answer"]} for p in rl])
    from exploresft_jax.models.tokenizer import train_bpe_tokenizer

    corpus = [r["prompt"] + " " + r["response"] for r in base + teacher]
    train_bpe_tokenizer(corpus, vocab_size=s.bpe_vocab, split_digits=True).save_pretrained(paths["tokenizer"])
    return paths


# --- training ---------------------------------------------------------------------------------------------------

def pretrain_base(s: DemoSettings, work: Path, data: dict[str, Path]) -> Path:
    """A random tiny Qwen2 pretrained on the base corpus; returns its HF export folder."""
    from exploresft_jax.train import loop

    out = work / "base"
    if not (out / "hf_export" / "config.json").exists():
        c = _base_run_config(s, out, seed=0)
        c.model.init = "random"
        c.model.custom.update(dict(hidden_size=s.hidden, intermediate_size=2 * s.hidden, num_layers=s.layers,
                                   num_heads=s.heads, num_kv_heads=s.kv_heads, head_dim=s.hidden // s.heads))
        c.tokenizer.path = str(data["tokenizer"])
        c.data.train_files = (str(data["base"]),)
        c.batch.global_size = s.base_batch
        c.optim.num_steps = s.base_steps
        c.optim.lr = s.base_lr
        c.optim.warmup_steps = 20
        c.log.every_steps = 25
        loop.run(c)
    return out / "hf_export"


def finetune(s: DemoSettings, method: str, base: Path, train_file: Path, workdir: Path, seed: int) -> Path:
    """One fine-tuning run of `method` from the base model; returns its HF export folder."""
    from exploresft_jax.train import loop

    if not (workdir / "hf_export" / "config.json").exists():
        c = _base_run_config(s, workdir, seed)
        c.method = method
        c.model.init = "hf"
        c.model.path = str(base)
        c.data.train_files = (str(train_file),)
        c.batch.global_size = s.ft_batch
        c.batch.ul_size = s.ft_batch
        c.optim.num_steps = s.ft_steps
        c.optim.lr = s.ft_lr
        c.optim.warmup_steps = max(1, s.ft_steps // 20)
        c.loss.oxa.ul_weight = s.ul_weight
        c.loss.entropy_reg.coef = s.entropy_coef
        loop.run(c)
    return workdir / "hf_export"


def grpo(s: DemoSettings, start: Path, rl_file: Path, workdir: Path, seed: int) -> Path:
    """A short GRPO run from `start` on the RL problems; returns its HF export folder."""
    from exploresft_jax.train import grpo_loop

    if not (workdir / "hf_export" / "config.json").exists():
        c = _base_run_config(s, workdir, seed)
        c.method = "grpo"
        c.model.init = "hf"
        c.model.path = str(start)
        c.grpo.prompt_files = (str(rl_file),)
        c.grpo.sft_warmup_steps = 0
        c.grpo.prompts_per_step = s.grpo_prompts
        c.grpo.group_size = s.grpo_group
        c.grpo.max_new_tokens = s.max_new_tokens
        c.grpo.max_prompt_length = 96
        c.grpo.temperature = 1.0
        c.grpo.sampler_rows = s.grpo_prompts * s.grpo_group
        c.grpo.sample_log_every = max(1, s.grpo_steps // 2)
        c.optim.num_steps = s.grpo_steps
        c.optim.lr = s.grpo_lr
        c.optim.schedule = "constant"
        c.optim.warmup_steps = 1
        c.log.every_steps = 1
        grpo_loop.run(c)
    return workdir / "hf_export"


# --- sampling and evaluation -------------------------------------------------------------------------------------

def sample_and_verify(model_dir: Path, probs: list[dict], n: int, *, temperature: float, max_new_tokens: int,
                      seed: int) -> dict:
    """n samples per problem from the HF model in `model_dir`, verified against each problem's answer.

    Returns {"texts": [P][n] str, "correct": [P][n] bool, "entropy": mean sampled-token entropy (nats),
    "length": mean generated tokens, "logprob": [P][n] summed log-probs}.
    """
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer, stop_token_ids
    from exploresft_jax.rewards import check_batch
    from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts

    tok = load_tokenizer(model_dir)
    model = hf.load_hf_model(model_dir, dtype="float32")
    sampler = Sampler(model, cache_dtype="float32", max_rows=256,
                      pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
    ids = encode_prompts(tok, [p["prompt"] for p in probs], chat_template=True)
    out = sampler.generate(ids, n=n, max_new_tokens=max_new_tokens, config=SamplingConfig(temperature=temperature),
                           stop_ids=stop_token_ids(tok), key=seed)
    texts = [tok.decode(out.tokens[r, :out.lengths[r]], skip_special_tokens=True) for r in range(len(out.lengths))]
    golds = [p["answer"] for p in probs for _ in range(n)]
    ok = [v.status == "correct" for v in check_batch(golds, texts)]
    mask = out.mask
    return {"texts": [texts[i * n:(i + 1) * n] for i in range(len(probs))],
            "correct": [ok[i * n:(i + 1) * n] for i in range(len(probs))],
            "entropy": float((out.entropy * mask).sum() / max(mask.sum(), 1)),
            "length": float(out.lengths.mean()),
            "logprob": out.sum_logprob.reshape(len(probs), n).tolist()}


def evaluate(s: DemoSettings, model_dir: Path, eval_file: Path, seed: int) -> dict:
    """Pass@k for k = 1, 2, 4, ... up to eval_samples, sampled-token entropy and the style mix of the samples."""
    from exploresft_jax.eval import pass_at_k_curve

    probs = _read_jsonl(eval_file)
    res = sample_and_verify(model_dir, probs, s.eval_samples, temperature=s.eval_temperature,
                            max_new_tokens=s.max_new_tokens, seed=seed)
    styles = [wp.style_of(t) for row in res["texts"] for t in row]
    mix = {st: styles.count(st) / len(styles) for st in (*wp.STYLES, "other")}
    distinct = np.mean([len({wp.style_of(t) for t, ok in zip(row, oks) if ok})
                        for row, oks in zip(res["texts"], res["correct"])])
    return {"pass_at_k": {str(k): v for k, v in pass_at_k_curve(res["correct"]).items()},
            "entropy": res["entropy"], "length": res["length"], "style_mix": mix,
            "distinct_correct_styles": float(distinct),
            "examples": [{"prompt": probs[i]["prompt"], "answer": probs[i]["answer"], "response": res["texts"][i][0],
                          "correct": res["correct"][i][0]} for i in range(min(3, len(probs)))]}


# --- OXA data preparation ----------------------------------------------------------------------------------------

def self_solutions(s: DemoSettings, base: Path, teacher_file: Path, out: Path) -> Path:
    """The base model's own samples on the teacher problems, with "correct" from the verifier."""
    if out.exists():
        return out
    teacher = _read_jsonl(teacher_file)
    probs = list({r["prompt"]: {"prompt": r["prompt"], "answer": r["answer"]} for r in teacher}.values())
    res = sample_and_verify(base, probs, s.self_samples, temperature=1.0, max_new_tokens=s.max_new_tokens, seed=12345)
    rows = [{"prompt": p["prompt"], "answer": p["answer"], "response": t, "correct": bool(ok), "style": wp.style_of(t)}
            for p, texts, oks in zip(probs, res["texts"], res["correct"]) for t, ok in zip(texts, oks) if t.strip()]
    return write_jsonl(out, rows)


def score(model: Path, inp: Path, out: Path) -> Path:
    """Per-record PPL of the response under `model`, conditioned on the chat-templated prompt. (The OXA release
    scores the response alone; here a solution's numbers are unpredictable without its problem, so the
    unconditioned PPL would rank solutions by how many numbers they hold, not by how unlikely their style is.)"""
    if not out.exists():
        from exploresft_jax.selection.perplexity import score_file

        score_file(str(model), str(inp), str(out), condition_on_prompt=True, dtype="float32", max_batch_tokens=8192,
                   chunk_size=128)
    return out


def oxa_window(ppls: list[float]) -> dict:
    """OXA's Gaussian over perplexity, placed for this base model: the release centres it at 2.5 for
    Qwen2.5-Math-1.5B, above most teacher responses' PPL; here mu is the 75th percentile of the teacher PPLs
    and sigma a quarter of their 10-90% spread, so the selection favours the solutions the base finds unlikely."""
    p = np.asarray(ppls, float)
    q10, q75, q90 = np.percentile(p, [10, 75, 90])
    return {"mu": float(q75), "sigma": float(max((q90 - q10) / 4, 1e-3)), "lo": float(p.min()), "hi": float(p.max())}


def select_data(s: DemoSettings, work: Path, teacher_ppl: Path, self_ppl: Path, seed: int) -> dict:
    """Writes select/oxa.jsonl (oxa_select.select_files) and select/random_<seed>.jsonl (the baselines' data: as
    many correct teacher solutions drawn uniformly, one per problem); returns paths and the selection summary."""
    d = work / "select"
    d.mkdir(parents=True, exist_ok=True)
    teacher = _read_jsonl(teacher_ppl)
    win = oxa_window([r["ppl"] for r in teacher])
    oxa = d / "oxa.jsonl"
    if not oxa.exists():
        from exploresft_jax.selection.oxa_select import select_files

        select_files(str(teacher_ppl), str(oxa), self_file=str(self_ppl), num_positives=s.select_size,
                     num_negatives=s.num_negatives, mu=win["mu"], sigma=win["sigma"], ppl_min=win["lo"],
                     ppl_max=win["hi"] + 1e-6, bins=40, neg_ppl_floor=1.0, correct_field="teacher_correct")
    rnd = d / f"random_{seed}.jsonl"
    if not rnd.exists():
        rng = random.Random(seed)
        by_prompt: dict[str, list[dict]] = {}
        for r in teacher:
            by_prompt.setdefault(r["prompt"], []).append(r)
        prompts = rng.sample(sorted(by_prompt), min(s.select_size, len(by_prompt)))
        write_jsonl(rnd, [{**rng.choice(by_prompt[p]), "loss_type": "ce"} for p in prompts])
    return {"oxa": oxa, "random": rnd, "window": win}


# --- the whole demo ---------------------------------------------------------------------------------------------

def run_demo(s: DemoSettings, workdir: str | Path, *, seeds=(0,), grpo_stage: bool = True,
             methods=METHODS) -> Path:
    """Runs every stage for every seed (finished stages are reused), writes results.json and REPORT.md with its
    plots under `workdir`; returns the report's path."""
    from exploresft_jax.demo import report

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        _say(f"{name} ...")
        r = fn(*a, **kw)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        return r

    data = timed("data", make_data, s, work)
    # every teacher solution is verified correct by construction; the field lets select_oxa skip re-verifying
    teacher_in = work / "data" / "teacher_checked.jsonl"
    if not teacher_in.exists():
        write_jsonl(teacher_in, [{**r, "teacher_correct": True} for r in _read_jsonl(data["teacher"])])
    base = timed("pretrain base", pretrain_base, s, work, data)
    self_file = timed("self samples", self_solutions, s, base, data["teacher"], work / "data" / "self.jsonl")
    self_in = work / "data" / "self_checked.jsonl"
    if not self_in.exists():
        write_jsonl(self_in, [{**r, "teacher_correct": r["correct"]} for r in _read_jsonl(self_file)])
    teacher_ppl = timed("score ppl", score, base, teacher_in, work / "data" / "teacher.ppl.jsonl")
    self_ppl = timed("score ppl", score, base, self_in, work / "data" / "self.ppl.jsonl")

    results: dict = {"settings": dataclasses.asdict(s), "seeds": list(seeds), "runs": {}}
    base_eval = work / "eval" / "base.json"
    if not base_eval.exists():
        _write_json(base_eval, timed("evaluate", evaluate, s, base, data["eval"], seed=0))
    results["base"] = json.loads(base_eval.read_text())
    for seed in seeds:
        sel = timed("select", select_data, s, work, teacher_ppl, self_ppl, seed)
        results["window"] = sel["window"]
        for method in methods:
            key = f"{method}/seed{seed}"
            train_file = sel["oxa"] if method == "oxa" else sel["random"]
            run_dir = work / "runs" / method / f"seed{seed}"
            model = timed(f"train {method}", finetune, s, method, base, train_file, run_dir, seed)
            ev_path = run_dir / "eval.json"
            if not ev_path.exists():
                _write_json(ev_path, timed("evaluate", evaluate, s, model, data["eval"], seed=seed))
            entry = {"sft": json.loads(ev_path.read_text()), "train_metrics": str(run_dir / "metrics.jsonl")}
            if grpo_stage:
                g_dir = run_dir / "grpo"
                g_model = timed("grpo", grpo, s, model, data["rl"], g_dir, seed)
                g_eval = g_dir / "eval.json"
                if not g_eval.exists():
                    _write_json(g_eval, timed("evaluate", evaluate, s, g_model, data["eval"], seed=seed))
                entry["grpo"] = json.loads(g_eval.read_text())
                entry["grpo_metrics"] = str(g_dir / "metrics.jsonl")
            results["runs"][key] = entry
    timings["total"] = time.perf_counter() - t_all
    results["timings_s"] = timings
    results["selection"] = report.selection_summary(work)
    _write_json(work / "results.json", results)
    path = report.write_report(work, results, s)
    _say(f"report: {path} ({timings['total']:.0f} s)")
    return path


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
