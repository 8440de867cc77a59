"""The demo's stages, each a plain function over a work directory (files in, files out).

  data       teacher solutions, held-out, validation and RL problems (exploresft_jax.data.word_problems)
  base       the shipped base model (demo/base_model.py; `scripts/demo.py --pretrain` rebuilds it)
  self       the base model's own sampled solutions to the teacher problems, labelled by the verifier
  score      perplexity of teacher and self solutions under the base model (selection.perplexity.score_file,
             what scripts/score_ppl.py runs)
  select     OXA selection (selection.oxa_select.select_files, what scripts/select_oxa.py runs) and a random
             selection of the same size for the baselines
  train      sft (random data), oxa, curio, entropy_reg from the same base with the same steps and batch, each
             with the learning rate and coefficient its validation sweep chose (demo/assets/choices.json)
  eval       Pass@k (k = 1..n), token entropy (overall and by token class), the style mix, well-formedness and
             the bug share of wrong answers on held-out problems
  grpo       GRPO from every fine-tuned model, evaluated the same way
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

import exploresft_jax.demo.base_model as base_model
import exploresft_jax.demo.report as report
from exploresft_jax.data import word_problems as wp
from exploresft_jax.data.jsonl import read_jsonl, write_jsonl
from exploresft_jax.demo.tasks import PROBLEM_SETS, TOKEN_CLASSES, problem_sets, token_classes  # noqa: F401

# the demo's fine-tuning arms: method -> (its training data: "oxa" = the OXA selection, "random" = the baselines'
# random teacher sample; (section of cfg.loss, field) that its swept coefficient sets, or None)
ARMS = {"sft": ("random", None), "oxa": ("oxa", ("oxa", "ul_weight")), "curio": ("random", ("curio", "coef")),
        "entropy_reg": ("random", ("entropy_reg", "coef"))}
METHODS = tuple(ARMS)
CHOICES = Path(__file__).resolve().parent / "assets" / "choices.json"


@dataclasses.dataclass
class DemoSettings:
    """Sizes of every stage. `full()` is the default demo (3 seeds in about 13 minutes on 2 CPU cores);
    `quick()` is the reduced size the tests run."""

    base_dir: str = ""  # "" = the shipped base model (base_model.SHIPPED)
    # teacher data, self samples, selection
    teacher_problems: int = 400
    self_samples: int = 2
    select_size: int = 256
    num_negatives: int = 256
    # fine-tuning: every method the same steps and batch; lr and coefficient from its validation sweep
    ft_steps: int = 60
    ft_batch: int = 16
    max_length: int = 136
    # evaluation (held-out) and the sweep's validation split
    eval_problems: int = 16
    eval_samples: int = 64
    eval_temperature: float = 1.0
    max_new_tokens: int = 96
    val_problems: int = 32
    val_samples: int = 16
    # GRPO
    grpo_steps: int = 16
    grpo_prompts: int = 4
    grpo_group: int = 8
    rl_problems: int = 512

    @classmethod
    def full(cls) -> DemoSettings:
        return cls()

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(teacher_problems=48, select_size=32, num_negatives=32, ft_steps=8, ft_batch=8, eval_problems=8,
                   eval_samples=8, val_problems=8, val_samples=4, grpo_steps=2, grpo_prompts=4, grpo_group=4,
                   rl_problems=32)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def load_choices(path: str | Path | None = None) -> dict:
    """Each method's learning rate and coefficient (and GRPO's lr) chosen by the validation sweep."""
    return json.loads(Path(path or CHOICES).read_text())["choices"]


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
    """Writes data/{teacher,eval,val,rl}.jsonl; returns their paths. The problem sets are disjoint, and the base
    corpus was built without any of them (base_model.reserved_prompts)."""
    d = work / "data"
    paths = {k: d / f"{k}.jsonl" for k in ("teacher", "eval", "val", "rl")}
    if all(p.exists() for p in paths.values()):
        return paths
    sets = problem_sets(full_size=False, s=s)
    write_jsonl(paths["teacher"], wp.teacher_solutions(sets["teacher"]))
    for name in ("eval", "val", "rl"):
        write_jsonl(paths[name], [{"prompt": p["prompt"], "answer": p["answer"], "bug_answers": p["bug_answers"]}
                                  for p in sets[name]])
    return paths


# --- training ---------------------------------------------------------------------------------------------------

def base_model_dir(s: DemoSettings) -> Path:
    """The base model every arm starts from: the shipped one unless `base_dir` names another HF folder."""
    path = Path(s.base_dir) if s.base_dir else base_model.SHIPPED
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no base model here (config.json missing); rebuild it with "
                                "`python scripts/demo.py --pretrain`")
    return path


def finetune(s: DemoSettings, method: str, base: Path, train_file: Path, workdir: Path, seed: int,
             choice: dict) -> Path:
    """One fine-tuning run of `method` from the base model with `choice` ({"lr", "coef"}: its learning rate and
    its own coefficient: OXA's ul_weight, CurioSFT's coef, the entropy bonus); returns its HF export folder."""
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
        c.optim.lr = float(choice["lr"])
        c.optim.warmup_steps = max(1, s.ft_steps // 20)
        coef_field = ARMS[method][1]
        if coef_field is not None:  # a field of the method's loss section
            section, name = coef_field
            c.loss[section][name] = float(choice["coef"])
        loop.run(c)
    return workdir / "hf_export"


def grpo(s: DemoSettings, start: Path, rl_file: Path, workdir: Path, seed: int, lr: float) -> Path:
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
        c.grpo.max_prompt_length = 64
        c.grpo.temperature = 1.0
        c.grpo.sampler_rows = s.grpo_prompts * s.grpo_group
        c.grpo.sample_log_every = max(1, s.grpo_steps // 2)
        c.optim.num_steps = s.grpo_steps
        c.grpo.lr = float(lr)  # grpo.lr, when set, replaces optim.lr (grpo_loop.optim_config)
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
    "entropy_by_class": {class: mean entropy of the tokens of that class}, "length": mean generated tokens,
    "logprob": [P][n] summed log-probs}.
    """
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer, stop_token_ids
    from exploresft_jax.rewards import check_batch
    from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts
    from exploresft_jax.sampling.text import decode_rows

    tok = load_tokenizer(model_dir)
    model = hf.load_hf_model(model_dir, dtype="float32")
    # rows of one problem set stop at similar lengths: whole static batches beat slot refills at this size
    sampler = Sampler(model, cache_dtype="float32", max_rows=1024, engine="static",
                      pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
    ids = encode_prompts(tok, [p["prompt"] for p in probs], chat_template=True)
    out = sampler.generate(ids, n=n, max_new_tokens=max_new_tokens, config=SamplingConfig(temperature=temperature),
                           stop_ids=stop_token_ids(tok), key=seed)
    texts = decode_rows(tok, out)
    golds = [p["answer"] for p in probs for _ in range(n)]
    ok = [v.status == "correct" for v in check_batch(golds, texts)]
    mask = out.mask
    classes = token_classes(tok, out.tokens, out.lengths)
    by_class = {name: float(out.entropy[classes == i].mean()) if (classes == i).any() else float("nan")
                for i, name in enumerate(TOKEN_CLASSES)}
    return {"texts": [texts[i * n:(i + 1) * n] for i in range(len(probs))],
            "correct": [ok[i * n:(i + 1) * n] for i in range(len(probs))],
            "entropy": float((out.entropy * mask).sum() / max(mask.sum(), 1)),
            "entropy_by_class": by_class,
            "length": float(out.lengths.mean()),
            "logprob": out.sum_logprob.reshape(len(probs), n).tolist()}


def evaluate(model_dir: Path, eval_file: Path, seed: int, *, samples: int, temperature: float,
             max_new_tokens: int) -> dict:
    """Pass@k for every k = 1..samples, token entropy (overall and by class), the style mix of the samples, and
    the base checks (well-formed share, bug share of the wrong answers) on the problems of `eval_file`."""
    from exploresft_jax.eval import pass_at_k_curve

    probs = read_jsonl(eval_file)
    res = sample_and_verify(model_dir, probs, samples, temperature=temperature, max_new_tokens=max_new_tokens,
                            seed=seed)
    styles = [wp.style_of(t) for row in res["texts"] for t in row]
    mix = {st: styles.count(st) / len(styles) for st in (*wp.STYLES, "other")}
    distinct = np.mean([len({wp.style_of(t) for t, ok in zip(row, oks) if ok})
                        for row, oks in zip(res["texts"], res["correct"])])
    curve = pass_at_k_curve(res["correct"], ks=range(1, samples + 1))
    return {"pass_at_k": {str(k): v for k, v in curve.items()},
            "entropy": res["entropy"], "entropy_by_class": res["entropy_by_class"], "length": res["length"],
            "style_mix": mix, "distinct_correct_styles": float(distinct),
            "checks": base_model.base_checks(res["texts"], res["correct"], probs),
            "examples": [{"prompt": probs[i]["prompt"], "answer": probs[i]["answer"], "response": res["texts"][i][0],
                          "correct": res["correct"][i][0]} for i in range(min(3, len(probs)))]}


def evaluate_held_out(s: DemoSettings, model_dir: Path, eval_file: Path, seed: int) -> dict:
    return evaluate(model_dir, eval_file, seed, samples=s.eval_samples, temperature=s.eval_temperature,
                    max_new_tokens=s.max_new_tokens)


# --- OXA data preparation ----------------------------------------------------------------------------------------

def self_solutions(s: DemoSettings, base: Path, teacher_file: Path, out: Path) -> Path:
    """The base model's own samples on the teacher problems, with "correct" from the verifier."""
    if out.exists():
        return out
    teacher = read_jsonl(teacher_file)
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
    teacher = read_jsonl(teacher_ppl)
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

class _Timer:
    """Seconds per stage name, summed over calls."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name, fn, *a, **kw):
        t = time.perf_counter()
        _say(f"{name} ...")
        r = fn(*a, **kw)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        return r


def prepare(s: DemoSettings, work: Path, timed: _Timer) -> dict:
    """The stages every seed shares: data, the base model, its self samples, the perplexities."""
    data = timed("data", make_data, s, work)
    # every teacher solution is verified correct by construction; the field lets select_oxa skip re-verifying
    teacher_in = work / "data" / "teacher_checked.jsonl"
    if not teacher_in.exists():
        write_jsonl(teacher_in, [{**r, "teacher_correct": True} for r in read_jsonl(data["teacher"])])
    base = base_model_dir(s)
    self_file = timed("self samples", self_solutions, s, base, data["teacher"], work / "data" / "self.jsonl")
    self_in = work / "data" / "self_checked.jsonl"
    if not self_in.exists():
        write_jsonl(self_in, [{**r, "teacher_correct": r["correct"]} for r in read_jsonl(self_file)])
    teacher_ppl = timed("score ppl", score, base, teacher_in, work / "data" / "teacher.ppl.jsonl")
    self_ppl = timed("score ppl", score, base, self_in, work / "data" / "self.ppl.jsonl")
    return {**data, "base": base, "teacher_ppl": teacher_ppl, "self_ppl": self_ppl}


def _cached(path: Path, fn, *a, **kw) -> dict:
    if not path.exists():
        _write_json(path, fn(*a, **kw))
    return json.loads(path.read_text())


def run_demo(s: DemoSettings, workdir: str | Path, *, seeds=(0, 1, 2), grpo_stage: bool = True,
             methods=METHODS, choices: str | Path | None = None) -> Path:
    """Runs every stage for every seed (finished stages are reused), writes results.json and REPORT.md with its
    plots under `workdir`; returns the report's path."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    _enable_compile_cache(work)
    timed = _Timer()
    t_all = time.perf_counter()
    ch = load_choices(choices)
    prep = prepare(s, work, timed)
    runs: dict = {}
    for seed in seeds:
        sel = timed("select", select_data, s, work, prep["teacher_ppl"], prep["self_ppl"], seed)
        runs[f"base/seed{seed}"] = {"pretrained": _cached(work / "eval" / f"base_seed{seed}.json", timed, "evaluate",
                                                          evaluate_held_out, s, prep["base"], prep["eval"], seed)}
        for method in methods:
            train_file = sel[ARMS[method][0]]
            run_dir = work / "runs" / method / f"seed{seed}"
            model = timed(f"train {method}", finetune, s, method, prep["base"], train_file, run_dir, seed,
                          ch[method])
            entry = {"fine-tuned": _cached(run_dir / "eval.json", timed, "evaluate", evaluate_held_out, s, model,
                                           prep["eval"], seed),
                     "train_metrics": str(run_dir / "metrics.jsonl")}
            if grpo_stage:
                g_dir = run_dir / "grpo"
                g_model = timed("grpo", grpo, s, model, prep["rl"], g_dir, seed, float(ch["grpo"]["lr"]))
                entry["grpo"] = _cached(g_dir / "eval.json", timed, "evaluate", evaluate_held_out, s, g_model,
                                        prep["eval"], seed)
                entry["grpo_metrics"] = str(g_dir / "metrics.jsonl")
            runs[f"{method}/seed{seed}"] = entry
    timed.seconds["total"] = time.perf_counter() - t_all
    results = report.build_results(runs, seeds=list(seeds), settings=dataclasses.asdict(s), choices=ch,
                                   window=sel["window"], selection=report.selection_summary(work),
                                   timings=timed.seconds, base_recipe=_base_recipe(prep["base"]))
    _write_json(work / "results.json", results)
    path = report.write_report(work, results, s)
    _say(f"report: {path} ({timed.seconds['total']:.0f} s)")
    return path


def _base_recipe(base: Path) -> dict:
    path = Path(base) / "recipe.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rebuild_base(s: DemoSettings, out: Path, work: Path, recipe=None) -> dict:
    """`scripts/demo.py --pretrain`: pretrains the base model from its recipe into `out`, measures the base checks
    on the held-out problems (eval_samples each, at the evaluation temperature) and records them with it."""
    work = Path(work)
    _enable_compile_cache(work)
    base_model.pretrain(recipe or base_model.PretrainRecipe(), Path(out), work / "pretrain")
    data = make_data(s, work)
    ev = evaluate(Path(out), data["eval"], 0, samples=s.eval_samples, temperature=s.eval_temperature,
                  max_new_tokens=s.max_new_tokens)
    checks = {**ev["checks"], "pass@k": {k: ev["pass_at_k"][k] for k in ("1", "8", str(s.eval_samples))
                                         if k in ev["pass_at_k"]},
              "style_mix": ev["style_mix"], "problems": s.eval_problems, "samples": s.eval_samples,
              "temperature": s.eval_temperature}
    base_model.record_checks(Path(out), checks)
    return checks


# --- the validation sweep ----------------------------------------------------------------------------------------

# each method's learning rate x its own coefficient (OXA's ul_weight, CurioSFT's coef, the entropy bonus);
# GRPO's learning rate, shared by every start, is chosen from the SFT start
SWEEP_GRID = {"sft": {"lr": (1e-4, 3e-4, 1e-3), "coef": (0.0,)},
              "oxa": {"lr": (1e-4, 3e-4, 1e-3), "coef": (0.01, 0.03, 0.1)},
              "curio": {"lr": (1e-4, 3e-4, 1e-3), "coef": (0.25, 0.5, 1.0)},
              "entropy_reg": {"lr": (1e-4, 3e-4, 1e-3), "coef": (0.01, 0.03)}}
GRPO_LRS = (1e-4, 3e-4, 1e-3)


def sweep(s: DemoSettings, workdir: str | Path, *, grid: dict = SWEEP_GRID, grpo_lrs=GRPO_LRS, seed: int = 0,
          record: str | Path | None = None) -> dict:
    """Fine-tunes every method at every grid point (seed `seed`) and scores it on the validation split, never on
    the held-out problems: score = (Pass@1 + Pass@n) / 2 with n = val_samples, so neither sharpness nor diversity
    alone wins. GRPO's learning rate: each of `grpo_lrs` from the chosen SFT model, scored the same way. Writes
    sweep.json (every score and the choice); with `record`, also the choices file there.
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    _enable_compile_cache(work)
    timed = _Timer()
    prep = prepare(s, work, timed)
    sel = select_data(s, work, prep["teacher_ppl"], prep["self_ppl"], seed)
    scores: dict = {}
    for method, axes in grid.items():
        for lr in axes["lr"]:
            for coef in axes["coef"]:
                name = f"lr{lr:g}_coef{coef:g}"
                run_dir = work / "sweep" / method / name
                model = timed(f"sweep {method} {name}", finetune, s, method, prep["base"],
                              sel[ARMS[method][0]], run_dir, seed,
                              {"lr": lr, "coef": coef})
                ev = _cached(run_dir / "val.json", evaluate, model, prep["val"], seed, samples=s.val_samples,
                             temperature=s.eval_temperature, max_new_tokens=s.max_new_tokens)
                p1, pn = ev["pass_at_k"]["1"], ev["pass_at_k"][str(s.val_samples)]
                scores.setdefault(method, []).append({"lr": lr, "coef": coef, "pass@1": p1,
                                                      f"pass@{s.val_samples}": pn, "score": (p1 + pn) / 2})
    choices = {m: {k: max(rows, key=lambda r: r["score"])[k] for k in ("lr", "coef")} for m, rows in scores.items()}
    if "sft" in choices and grpo_lrs:
        c = choices["sft"]
        sft_name = f"lr{c['lr']:g}_coef{c['coef']:g}"
        start = work / "sweep" / "sft" / sft_name / "hf_export"
        for lr in grpo_lrs:
            run_dir = work / "sweep" / "grpo" / f"from_sft_{sft_name}" / f"lr{lr:g}"
            model = timed(f"sweep grpo lr{lr:g}", grpo, s, start, prep["rl"], run_dir, seed, lr)
            ev = _cached(run_dir / "val.json", evaluate, model, prep["val"], seed, samples=s.val_samples,
                         temperature=s.eval_temperature, max_new_tokens=s.max_new_tokens)
            p1, pn = ev["pass_at_k"]["1"], ev["pass_at_k"][str(s.val_samples)]
            scores.setdefault("grpo", []).append({"lr": lr, "pass@1": p1, f"pass@{s.val_samples}": pn,
                                                  "score": (p1 + pn) / 2})
        choices["grpo"] = {"lr": max(scores["grpo"], key=lambda r: r["score"])["lr"]}
    out = {"rule": "max over the grid of (val Pass@1 + val Pass@n) / 2", "val_problems": s.val_problems,
           "val_samples": s.val_samples, "seed": seed, "ft_steps": s.ft_steps, "grpo_steps": s.grpo_steps,
           "grid": grid, "grpo_lrs": list(grpo_lrs), "scores": scores,
           "choices": choices, "seconds": timed.seconds}
    _write_json(work / "sweep.json", out)
    if record:  # without the timings, which only count the grid points this invocation trained
        _write_json(Path(record), {k: v for k, v in out.items() if k != "seconds"})
    return out


def _enable_compile_cache(work: Path) -> None:
    """Every arm and seed compiles the same programs: a persistent compilation cache makes the repeats cheap,
    where a program read back from it runs correctly (not on a multi-device CPU host; see compile_cache)."""
    from exploresft_jax import compile_cache

    if not compile_cache.enable(Path(work) / ".jax_cache"):
        _say(f"persistent compilation cache off: {compile_cache.unsafe_reason()}")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
