"""The demo's stages, each a plain function over a work directory (files in, files out).

  data       teacher solutions (every tier, verified), held-out, validation and RL problems, and one teacher
             solution per held-out problem (the shared set every arm's teacher-forced entropy is measured on)
  base       the shipped base model (demo/base_model.py; `scripts/demo.py --pretrain` rebuilds it)
  self       the base model's own sampled solutions to the teacher problems, labelled by the verifier
  score      perplexity of teacher and self solutions under the base model (selection.perplexity.score_file,
             what scripts/score_ppl.py runs)
  select     OXA selection (selection.oxa_select.select_files, what scripts/select_oxa.py runs) and a random
             selection of the same size for the baselines
  train      the arms (ARMS) from the same base with the same steps and batch, each with the learning rate and
             coefficient its validation sweep chose (demo/assets/choices.json)
  eval       Pass@k (k = 1..n) at the evaluation temperature, Pass@1 by tier, sampled-token entropy (overall and
             by token class), teacher-forced entropy on the shared set, well-formedness and the bug share of wrong
             answers, on held-out problems
  grpo       (--full) GRPO from every fine-tuned model, evaluated the same way
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


@dataclasses.dataclass(frozen=True)
class Arm:
    """One fine-tuning arm: its training method (cfg.method), its data ("oxa" = the OXA selection, positives and
    negatives; "random" = the baselines' uniform sample of teacher solutions), the (section of cfg.loss, field)
    its swept coefficient sets (None: no coefficient), and whether its batches carry the negatives."""

    method: str
    data: str
    coef: tuple[str, str] | None = None
    ul_rows: bool = True  # oxa: whether its batches carry the negatives (False: OXA-MLE, CE on positives only)


ARMS = {"sft": Arm("sft", "random"),
        "oxa": Arm("oxa", "oxa", ("oxa", "ul_weight")),
        "oxa_mle": Arm("oxa", "oxa", None, ul_rows=False),
        "curio": Arm("curio", "random", ("curio", "coef")),
        "entropy_reg": Arm("entropy_reg", "random", ("entropy_reg", "coef"))}
METHODS = tuple(ARMS)
DEFAULT_METHODS = ("sft", "oxa", "oxa_mle", "curio")  # entropy_reg joins with --full
CHOICES = Path(__file__).resolve().parent / "assets" / "choices.json"


@dataclasses.dataclass
class DemoSettings:
    """Sizes of every stage. `default()` is what `python scripts/demo.py` runs (3 seeds, the SFT-stage arms and
    claims); `full()` adds problems, entropy-regularised SFT and GRPO from every start; `quick()` is the reduced
    size the tests run."""

    base_dir: str = ""  # "" = the shipped base model (base_model.SHIPPED)
    # teacher data (two solutions per problem), self samples, selection
    teacher_problems: int = 480
    self_samples: int = 2
    select_size: int = 256
    num_negatives: int = 128  # fewer than the queries with a wrong sample: the most confident ones are kept
    # fine-tuning: every arm the same steps and batch; lr and coefficient from its validation sweep
    ft_steps: int = 60
    ft_batch: int = 16
    max_length: int = 144  # training rows: the longest teacher solution with its prompt is 137 tokens
    # evaluation (held-out; the releases evaluate at temperature 0.6) and the sweep's validation split
    eval_problems: int = 128
    eval_samples: int = 12  # Pass@k up to k = 12; the claims compare k = claim_k
    claim_k: int = 8  # the Pass@k the claims compare
    eval_temperature: float = 0.6
    max_new_tokens: int = 80
    val_problems: int = 64
    val_samples: int = 8
    # GRPO (--full)
    grpo: bool = False
    grpo_steps: int = 16
    grpo_prompts: int = 8
    grpo_group: int = 8
    grpo_prompt_length: int = 96  # the RL prompts are at most 72 tokens
    rl_problems: int = 512

    @classmethod
    def default(cls) -> DemoSettings:
        return cls()

    @classmethod
    def full(cls) -> DemoSettings:
        return cls(eval_problems=384, grpo=True)

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(teacher_problems=48, select_size=32, num_negatives=16, ft_steps=8, ft_batch=8, eval_problems=9,
                   eval_samples=8, claim_k=4, val_problems=6, val_samples=4, grpo=True, grpo_steps=2,
                   grpo_prompts=4, grpo_group=4, rl_problems=32)


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
    """Writes data/{teacher,eval,eval_teacher,val,rl}.jsonl; returns their paths. The problem sets are disjoint,
    and the base corpus was built without any of them (base_model.reserved_prompts). eval_teacher: one teacher
    solution per held-out problem, the shared set every arm's teacher-forced entropy is measured on."""
    d = work / "data"
    paths = {k: d / f"{k}.jsonl" for k in ("teacher", "eval", "eval_teacher", "val", "rl")}
    if all(p.exists() for p in paths.values()):
        return paths
    sets = problem_sets(full_size=False, s=s)
    write_jsonl(paths["teacher"], wp.teacher_solutions(sets["teacher"]))
    write_jsonl(paths["eval_teacher"], wp.teacher_solutions(sets["eval"], per_problem=1, seed=1))
    for name in ("eval", "val", "rl"):
        write_jsonl(paths[name], [{"prompt": p["prompt"], "answer": p["answer"], "tier": p["tier"],
                                   "bug_answers": p["bug_answers"]} for p in sets[name]])
    return paths


# --- training ---------------------------------------------------------------------------------------------------

def base_model_dir(s: DemoSettings) -> Path:
    """The base model every arm starts from: the shipped one unless `base_dir` names another HF folder."""
    path = Path(s.base_dir) if s.base_dir else base_model.SHIPPED
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no base model here (config.json missing); rebuild it with "
                                "`python scripts/demo.py --pretrain`")
    return path


def finetune(s: DemoSettings, arm: str, base: Path, train_file: Path, workdir: Path, seed: int,
             choice: dict) -> Path:
    """One fine-tuning run of `arm` (ARMS) from the base model with `choice` ({"lr", "coef"}: its learning rate
    and its own coefficient: OXA's ul_weight, CurioSFT's coef, the entropy bonus); returns its HF export folder.

    CE reduction: OXA and OXA-MLE average each example's token mean (the release's); SFT, CurioSFT and
    entropy-regularised SFT the token mean over the step (their releases')."""
    from exploresft_jax.train import loop

    a = ARMS[arm]
    if not (workdir / "hf_export" / "config.json").exists():
        c = _base_run_config(s, workdir, seed)
        c.method = a.method
        c.model.init = "hf"
        c.model.path = str(base)
        c.data.train_files = (str(train_file),)
        c.batch.global_size = s.ft_batch
        c.batch.ul_size = s.ft_batch if a.ul_rows else 0  # OXA-MLE: no negatives (no UL term)
        if not a.ul_rows:
            c.loss.oxa.ul_weight = 0.0
        c.optim.num_steps = s.ft_steps
        c.optim.lr = float(choice["lr"])
        c.optim.warmup_steps = max(1, s.ft_steps // 20)
        if a.coef is not None:  # a field of the arm's loss section
            section, name = a.coef
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
        c.grpo.max_prompt_length = s.grpo_prompt_length
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

    Returns {"texts": [P][n] str, "correct": [P][n] bool, "entropy": mean sampled-token entropy (nats, of the
    distribution sampled from), "entropy_by_class": {class: the same over that token class}, "length": mean
    generated tokens}.
    """
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer, stop_token_ids
    from exploresft_jax.rewards import check_batch
    from exploresft_jax.sampling import Sampler, SamplingConfig, encode_prompts
    from exploresft_jax.sampling.text import decode_rows

    tok = load_tokenizer(model_dir)
    model = hf.load_hf_model(model_dir, dtype="float32")
    # rows of one problem set stop at similar lengths: whole static batches beat slot refills at this size; a
    # batch decodes until its longest row ends, so 256-row batches finish sooner than 1,024-row ones
    sampler = Sampler(model, cache_dtype="float32", max_rows=256, engine="static",
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
            "length": float(out.lengths.mean())}


def teacher_forced_entropy(model_dir: Path, records: list[dict]) -> dict:
    """Mean token entropy (nats, temperature 1) of the model's next-token distribution along fixed teacher
    solutions, conditioned on their prompts: {"all": over every response token, <class>: over that class's}.
    Every arm is measured on the same records, so the numbers compare models, not the texts they chose to write
    (the sampled entropy does both)."""
    from exploresft_jax.models import hf
    from exploresft_jax.models.tokenizer import load_tokenizer
    from exploresft_jax.selection.perplexity import encode_for_scoring, score_token_lists

    tok = load_tokenizer(model_dir)
    model, mesh, rules = hf.load_for_inference(model_dir, dtype="float32")  # placed on every device
    ids, scored = zip(*(encode_for_scoring(tok, r["response"], r["prompt"], condition_on_prompt=True)
                        for r in records))
    groups = []  # per token: 1 + its class on response tokens, 0 elsewhere (one scoring pass for every class)
    for t, m in zip(ids, scored):
        on = np.asarray(m) > 0
        resp = np.asarray(t)[on]
        g = np.zeros(len(t), np.int32)
        g[on] = token_classes(tok, resp[None], np.asarray([len(resp)]))[0].astype(np.int32) + 1
        groups.append(g)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    res = score_token_lists(model, list(ids), groups, mesh=mesh, rules=rules, pad_id=pad, chunk_size=256,
                            num_groups=len(TOKEN_CLASSES))
    ent = np.nansum(res.mean_entropy * res.num_tokens, axis=0)  # [classes] summed entropy
    count = res.num_tokens.sum(axis=0)
    out = {"all": float(ent.sum() / max(count.sum(), 1))}
    out.update({c: float(ent[i] / max(count[i], 1)) for i, c in enumerate(TOKEN_CLASSES)})
    return out


def evaluate(model_dir: Path, eval_file: Path, seed: int, *, samples: int, temperature: float,
             max_new_tokens: int, shared_file: Path | None = None) -> dict:
    """On the problems of `eval_file`: Pass@k for every k = 1..samples, Pass@1 by tier, sampled-token entropy
    (overall and by class), the base checks (well-formed share, bug share of the wrong answers) and, with
    `shared_file`, the teacher-forced entropy on its solutions."""
    from exploresft_jax.eval import pass_at_k_curve

    probs = read_jsonl(eval_file)
    res = sample_and_verify(model_dir, probs, samples, temperature=temperature, max_new_tokens=max_new_tokens,
                            seed=seed)
    curve = pass_at_k_curve(res["correct"], ks=range(1, samples + 1))
    tiers = {str(k): float(np.mean([np.mean(c) for p, c in zip(probs, res["correct"]) if p["tier"] == k]))
             for k in wp.TIERS if any(p["tier"] == k for p in probs)}
    out = {"pass_at_k": {str(k): v for k, v in curve.items()}, "pass@1_by_tier": tiers,
           "entropy": res["entropy"], "entropy_by_class": res["entropy_by_class"], "length": res["length"],
           "checks": base_model.base_checks(res["texts"], res["correct"], probs),
           "examples": [{"prompt": probs[i]["prompt"], "answer": probs[i]["answer"], "response": res["texts"][i][0],
                         "correct": res["correct"][i][0]} for i in range(min(3, len(probs)))]}
    if shared_file is not None:
        out["entropy_tf"] = teacher_forced_entropy(model_dir, read_jsonl(shared_file))
    return out


def evaluate_held_out(s: DemoSettings, model_dir: Path, data: dict, seed: int) -> dict:
    return evaluate(model_dir, data["eval"], seed, samples=s.eval_samples, temperature=s.eval_temperature,
                    max_new_tokens=s.max_new_tokens, shared_file=data["eval_teacher"])


# --- OXA data preparation ----------------------------------------------------------------------------------------

def self_solutions(s: DemoSettings, base: Path, teacher_file: Path, out: Path) -> Path:
    """The base model's own samples (temperature 1) on the teacher problems, with "correct" from the verifier."""
    if out.exists():
        return out
    teacher = read_jsonl(teacher_file)
    probs = list({r["prompt"]: {"prompt": r["prompt"], "answer": r["answer"], "tier": r["tier"]}
                  for r in teacher}.values())
    res = sample_and_verify(base, probs, s.self_samples, temperature=1.0, max_new_tokens=s.max_new_tokens, seed=12345)
    rows = [{"prompt": p["prompt"], "answer": p["answer"], "response": t, "correct": bool(ok), "tier": p["tier"]}
            for p, texts, oks in zip(probs, res["texts"], res["correct"]) for t, ok in zip(texts, oks) if t.strip()]
    return write_jsonl(out, rows)


def score(model: Path, inp: Path, out: Path) -> Path:
    """Per-record PPL of the response under `model`, conditioned on the chat-templated prompt. (The OXA release
    scores the response alone; here a solution's numbers are unpredictable without its problem, so the
    unconditioned PPL would rank solutions by how many numbers they hold, not by how unfamiliar they are.)"""
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


def negative_floor(self_ppls: list[float]) -> float:
    """The negatives' perplexity floor: the 5th percentile of the base model's own samples' PPL (the release's
    1.2 sits a little above the least perplexing responses of Qwen2.5-Math; here the whole scale is nearer 1),
    so the near-copies of the corpus it has memorised are not pushed down."""
    return float(np.percentile(np.asarray(self_ppls, float), 5)) if self_ppls else 1.0


def select_data(s: DemoSettings, work: Path, teacher_ppl: Path, self_ppl: Path, seed: int) -> dict:
    """Writes select/oxa.jsonl (oxa_select.select_files) and select/random_<seed>.jsonl (the baselines' data: as
    many correct teacher solutions drawn uniformly, one per problem); returns paths and the selection summary."""
    d = work / "select"
    d.mkdir(parents=True, exist_ok=True)
    teacher = read_jsonl(teacher_ppl)
    win = oxa_window([r["ppl"] for r in teacher])
    win["neg_floor"] = negative_floor([r["ppl"] for r in read_jsonl(self_ppl)])
    oxa = d / "oxa.jsonl"
    if not oxa.exists():
        from exploresft_jax.selection.oxa_select import select_files

        select_files(str(teacher_ppl), str(oxa), self_file=str(self_ppl), num_positives=s.select_size,
                     num_negatives=s.num_negatives, mu=win["mu"], sigma=win["sigma"], ppl_min=win["lo"],
                     ppl_max=win["hi"] + 1e-6, bins=40, neg_ppl_floor=win["neg_floor"],
                     correct_field="teacher_correct")
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


def run_demo(s: DemoSettings, workdir: str | Path, *, seeds=(0, 1, 2), methods=DEFAULT_METHODS,
             choices: str | Path | None = None) -> Path:
    """Runs every stage for every seed (finished stages are reused), writes results.json and REPORT.md with its
    plots under `workdir`; returns the report's path. GRPO from every start when `s.grpo`."""
    work = Path(workdir)
    claim_workdir(s, work)
    _enable_compile_cache(work)
    timed = _Timer()
    t_all = time.perf_counter()
    ch = load_choices(choices)
    prep = prepare(s, work, timed)
    runs: dict = {}
    for seed in seeds:
        sel = timed("select", select_data, s, work, prep["teacher_ppl"], prep["self_ppl"], seed)
        runs[f"base/seed{seed}"] = {"pretrained": _cached(work / "eval" / f"base_seed{seed}.json", timed, "evaluate",
                                                          evaluate_held_out, s, prep["base"], prep, seed)}
        for arm in methods:
            run_dir = work / "runs" / arm / f"seed{seed}"
            model = timed(f"train {arm}", finetune, s, arm, prep["base"], sel[ARMS[arm].data], run_dir, seed,
                          ch[arm])
            entry = {"fine-tuned": _cached(run_dir / "eval.json", timed, "evaluate", evaluate_held_out, s, model,
                                           prep, seed),
                     "train_metrics": str(run_dir / "metrics.jsonl")}
            if s.grpo:
                g_dir = run_dir / "grpo"
                g_model = timed("grpo", grpo, s, model, prep["rl"], g_dir, seed, float(ch["grpo"]["lr"]))
                entry["grpo"] = _cached(g_dir / "eval.json", timed, "evaluate", evaluate_held_out, s, g_model,
                                        prep, seed)
                entry["grpo_metrics"] = str(g_dir / "metrics.jsonl")
            runs[f"{arm}/seed{seed}"] = entry
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
    claim_workdir(s, work)
    _enable_compile_cache(work)
    base_model.pretrain(recipe or base_model.PretrainRecipe(), Path(out), work / "pretrain")
    data = make_data(s, work)
    ev = evaluate(Path(out), data["eval"], 0, samples=s.eval_samples, temperature=s.eval_temperature,
                  max_new_tokens=s.max_new_tokens, shared_file=data["eval_teacher"])
    checks = {**ev["checks"], "pass@k": {k: ev["pass_at_k"][k] for k in ("1", str(s.claim_k), str(s.eval_samples))
                                         if k in ev["pass_at_k"]},
              "pass@1_by_tier": ev["pass@1_by_tier"], "entropy": ev["entropy"], "entropy_tf": ev["entropy_tf"],
              "problems": s.eval_problems, "samples": s.eval_samples, "temperature": s.eval_temperature}
    base_model.record_checks(Path(out), checks)
    return checks


# --- the validation sweep ----------------------------------------------------------------------------------------

# each arm's learning rates and its own coefficients; every grid holds the releases' constants (OXA's UL weight
# 1e-4, and 0 as the OXA-MLE arm; CurioSFT's coefficient 1.0; "release": the coefficient the learning rates are
# tried at) and a choice at the edge of its grid is reported as such. GRPO's learning rate, shared by every start,
# is chosen from the SFT start.
LRS = (3e-4, 1e-3, 3e-3)
SWEEP_GRID = {"sft": {"lr": LRS, "coef": (0.0,), "release": 0.0},
              "oxa": {"lr": LRS, "coef": (1e-4, 1e-3, 1e-2), "release": 1e-4},
              "oxa_mle": {"lr": LRS, "coef": (0.0,), "release": 0.0},
              "curio": {"lr": LRS, "coef": (0.3, 1.0, 3.0), "release": 1.0},
              "entropy_reg": {"lr": LRS, "coef": (0.003, 0.01, 0.03), "release": 0.01}}
GRPO_LRS = (1e-4, 3e-4, 1e-3)


def at_edge(value: float, grid) -> bool:
    """A chosen value at either end of a grid of more than one value (the optimum may lie outside it)."""
    return len(grid) > 1 and value in (min(grid), max(grid))


def sweep(s: DemoSettings, workdir: str | Path, *, grid: dict = SWEEP_GRID, grpo_lrs=GRPO_LRS, seed: int = 0,
          record: str | Path | None = None) -> dict:
    """Chooses each arm's learning rate and coefficient on the validation split, never on the held-out problems:
    score = (Pass@1 + Pass@k) / 2 with k = claim_k, so neither sharpness nor diversity alone wins. A coordinate
    search (seed `seed`): every learning rate at the arm's release coefficient, then every coefficient at the best
    learning rate. GRPO's learning rate: each of `grpo_lrs` from the chosen SFT model, scored the same way. Writes
    sweep.json (every score, the choices and which of them sit at the edge of their grid); with `record`, also the
    choices file there.
    """
    work = Path(workdir)
    claim_workdir(s, work)
    _enable_compile_cache(work)
    timed = _Timer()
    prep = prepare(s, work, timed)
    sel = select_data(s, work, prep["teacher_ppl"], prep["self_ppl"], seed)
    k = min(s.claim_k, s.val_samples)

    def val_score(model):
        ev = _cached(model.parent / "val.json", evaluate, model, prep["val"], seed, samples=s.val_samples,
                     temperature=s.eval_temperature, max_new_tokens=s.max_new_tokens)
        p1, pk = ev["pass_at_k"]["1"], ev["pass_at_k"][str(k)]
        return {"pass@1": p1, f"pass@{k}": pk, "score": (p1 + pk) / 2}

    scores: dict = {}

    def point(arm, lr, coef):
        done = [r for r in scores.get(arm, []) if r["lr"] == lr and r["coef"] == coef]
        if done:
            return done[0]
        name = f"lr{lr:g}_coef{coef:g}"
        model = timed(f"sweep {arm} {name}", finetune, s, arm, prep["base"], sel[ARMS[arm].data],
                      work / "sweep" / arm / name, seed, {"lr": lr, "coef": coef})
        row = {"lr": lr, "coef": coef, **val_score(model)}
        scores.setdefault(arm, []).append(row)
        return row

    choices = {}
    for arm, axes in grid.items():
        release = axes.get("release", axes["coef"][0])
        best_lr = max((point(arm, lr, release) for lr in axes["lr"]), key=lambda r: r["score"])["lr"]
        best = max((point(arm, best_lr, coef) for coef in axes["coef"]), key=lambda r: r["score"])
        choices[arm] = {"lr": best["lr"], "coef": best["coef"]}
    if "sft" in choices and grpo_lrs:
        c = choices["sft"]
        sft_name = f"lr{c['lr']:g}_coef{c['coef']:g}"
        start = work / "sweep" / "sft" / sft_name / "hf_export"
        for lr in grpo_lrs:
            run_dir = work / "sweep" / "grpo" / f"from_sft_{sft_name}" / f"lr{lr:g}"
            model = timed(f"sweep grpo lr{lr:g}", grpo, s, start, prep["rl"], run_dir, seed, lr)
            scores.setdefault("grpo", []).append({"lr": lr, **val_score(model)})
        choices["grpo"] = {"lr": max(scores["grpo"], key=lambda r: r["score"])["lr"]}
    edges = {m: [axis for axis, v in c.items()
                 if at_edge(v, (grid.get(m, {}).get(axis) if m != "grpo" else grpo_lrs) or ())]
             for m, c in choices.items()}
    out = {"rule": f"max over the grid of (val Pass@1 + val Pass@{k}) / 2; learning rates at the release "
                   "coefficient, then coefficients at the best learning rate",
           "val_problems": s.val_problems, "val_samples": s.val_samples, "seed": seed, "ft_steps": s.ft_steps,
           "grpo_steps": s.grpo_steps, "grid": grid, "grpo_lrs": list(grpo_lrs), "scores": scores,
           "choices": choices, "at_edge": edges, "seconds": timed.seconds}
    _write_json(work / "sweep.json", out)
    if record:  # without the timings, which only count the grid points this invocation trained
        _write_json(Path(record), {k_: v for k_, v in out.items() if k_ != "seconds"})
    return out


def publish(work: Path, root: Path, *, full: bool = False) -> Path:
    """`scripts/demo.py --readme`: copies a finished run's plots and results.json (without the per-run file
    paths) to `root`/docs/demo and rewrites README's demo section from them; returns README's path.
    full=True (`--publish-full`, for a `--full` run): its REPORT.md, plots and results.json go to docs/demo/full
    instead and README is left alone (its section stays the default run's); returns the folder."""
    import shutil

    results = json.loads((Path(work) / "results.json").read_text())
    if full and not results["settings"]["grpo"]:
        raise ValueError(f"{Path(work) / 'results.json'}: not a --full run (settings.grpo is false)")
    docs = Path(root) / "docs" / "demo" / ("full" if full else "")
    docs.mkdir(parents=True, exist_ok=True)
    for png in Path(work).glob("*.png"):
        shutil.copy(png, docs / png.name)
    kept = {k: v for k, v in results.items() if k != "runs"}
    _write_json(docs / "results.json", kept)
    if full:
        shutil.copy(Path(work) / "REPORT.md", docs / "REPORT.md")
        return docs
    readme = Path(root) / "README.md"
    readme.write_text(report.replace_readme_section(readme.read_text(), report.readme_section(kept)))
    return readme


def claim_workdir(s: DemoSettings, work: Path) -> None:
    """Records `s` in work/settings.json, or checks that the run already there used the same settings: finished
    stages are reused by file name, so a workdir of another size (say a default run, then --full) would mix the
    two runs' data and evaluations."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "settings.json"
    now = dataclasses.asdict(s)
    if path.exists():
        before = json.loads(path.read_text())
        diff = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
        if diff:
            raise ValueError(f"{path}: this workdir holds a run with other settings ("
                             + ", ".join(f"{k} {before.get(k)!r} here, {now.get(k)!r} now" for k in diff)
                             + "); give another --workdir")
        return
    _write_json(path, now)


def _enable_compile_cache(work: Path) -> None:
    """Every arm and seed compiles the same programs: a persistent compilation cache makes the repeats cheap,
    where a program read back from it runs correctly (not on a multi-device CPU host; see compile_cache)."""
    from exploresft_jax import compile_cache

    if not compile_cache.enable(Path(work) / ".jax_cache"):
        _say(f"persistent compilation cache off: {compile_cache.unsafe_reason()}")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
