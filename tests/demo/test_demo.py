"""The demo end to end at a reduced size: every stage runs, REPORT.md holds numbers for every method, plots exist."""

from __future__ import annotations

import json
import logging
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from exploresft_jax.data import word_problems as wp
from exploresft_jax.rewards import check_batch

ROOT = Path(__file__).resolve().parents[2]


def test_word_problem_styles_verify_and_buggy_solutions_fail():
    probs = wp.problems(40, seed=3)
    assert len({p["prompt"] for p in probs}) == 40
    teacher = wp.teacher_solutions(probs)
    assert {r["style"] for r in teacher} == set(wp.STYLES) and len(teacher) > 2.5 * len(probs)
    assert all(wp.style_of(r["response"]) == r["style"] for r in teacher)
    verdicts = check_batch([r["answer"] for r in teacher], [r["response"] for r in teacher])
    assert all(v.status == "correct" for v in verdicts)
    # the dropped-carry bug gives a wrong boxed value whenever a carry or borrow happens
    text, value = wp.solve(57, [("+", 6), ("+", 8)], "direct", buggy=True)
    assert text == "57 + 6 = 53. 53 + 8 = 51. The answer is \\boxed{51}." and value == 51
    assert wp.solve(57, [("+", 6), ("+", 8)], "columns")[1] == wp.solve(57, [("+", 6), ("+", 8)], "split")[1] == 71
    assert wp.solve(62, [("-", 8), ("+", 5)], "direct", buggy=True)[0].startswith("62 - 8 = 64.")
    base = wp.base_corpus(400, seed=1, bug_rate=0.3)
    styles = [r["style"] for r in base]
    assert styles.count("direct") + styles.count("direct-buggy") > 0.7 * len(base)  # the common style
    assert 0 < styles.count("columns") < 0.15 * len(base)  # a rare one
    assert 0.15 < styles.count("direct-buggy") / len(base) < 0.4
    held = wp.problems(10, seed=9, exclude={p["prompt"] for p in probs})
    assert not {p["prompt"] for p in held} & {p["prompt"] for p in probs}


def test_bug_values_are_the_dropped_carry_results_at_any_step():
    # 57 + 6 carries (63; dropped: 53), then + 8 carries again (71; from 63 dropped: 61; from 53: 61 / dropped 51)
    assert wp.bug_values(57, [("+", 6), ("+", 8)]) == {51, 61}
    # 62 - 8 borrows (54; dropped: 64), then + 5: 54 + 5 = 59 (correct), 64 + 5 = 69 (no carry either way)
    assert wp.bug_values(62, [("-", 8), ("+", 5)]) == {69}
    # 40 - 3 - 9 = 28; the borrow dropped at the first step: 47 - 9 = 38, at the second: 37 - 9 -> 38, at both: 48
    assert wp.bug_values(40, [("-", 3), ("-", 9)]) == {38, 48}
    assert wp.bug_values(41, [("+", 2), ("-", 1)]) == set()  # no carry, no borrow: the bug changes nothing
    for p in wp.problems(30, seed=4):
        full_bug = wp.solve(p["start"], p["steps"], "direct", buggy=True)[1]
        assert set(p["bug_answers"]) == wp.bug_values(p["start"], p["steps"])
        assert (full_bug in p["bug_answers"]) == (full_bug != int(p["answer"]))


def test_base_checks_count_well_formed_and_bug_answers():
    from exploresft_jax.demo.base_model import base_checks, boxed_value

    assert boxed_value("57 + 6 = 63. The answer is \\boxed{63}.") == 63
    assert boxed_value("The answer is \\boxed{63}. And more") is None
    probs = [{"answer": "71", "bug_answers": [51, 61]}, {"answer": "43", "bug_answers": []}]
    texts = [["... \\boxed{71}.", "... \\boxed{61}.", "... \\boxed{12}.", "no box"],
             ["\\boxed{43}", "\\boxed{43}", "\\boxed{44}", "\\boxed{43}"]]
    correct = [[True, False, False, False], [True, True, False, True]]
    c = base_checks(texts, correct, probs)
    assert c["pass@1"] == 4 / 8 and c["well_formed"] == 7 / 8 and c["wrong"] == 4
    assert c["wrong_is_bug"] == 1 / 4  # only 61 of (61, 12, no box, 44)


def test_token_classes_mark_digits_operators_words_and_the_style_fork():
    from exploresft_jax.demo.base_model import SHIPPED
    from exploresft_jax.demo.pipeline import TOKEN_CLASSES, token_classes
    from exploresft_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(SHIPPED)
    text = "57 + 6: 7 + 6 = 13, carry 1; 5 + 1 = 6; 63. The answer is \\boxed{63}."
    ids = np.asarray([tok.encode(text)])
    cls = token_classes(tok, ids, np.asarray([ids.shape[1] - 2]))
    pieces = [tok.decode([t]) for t in ids[0]]
    names = {i: n for i, n in enumerate(TOKEN_CLASSES)}
    by = {n: [p.strip() for p, c in zip(pieces, cls[0]) if names.get(int(c)) == n] for n in TOKEN_CLASSES}
    assert by["fork"][0] == ":" and len(by["fork"]) == 2  # where columns writes ':' and direct ' ='
    assert set(by["digit"]) <= set("0123456789") and by["digit"]
    assert {"+", "=", ";"} <= set(by["operator"]) and "answer" in by["word"]
    assert (cls[0, -2:] == -1).all()  # past the row's length


def test_claim_verdicts_follow_the_stated_rule():
    from exploresft_jax.demo.report import verdict

    a, b = {"per_seed": [0.50, 0.52, 0.54]}, {"per_seed": [0.40, 0.41, 0.42]}
    d, se, v = verdict(a, b, 1)
    assert abs(d - 0.11) < 1e-12 and abs(se - np.sqrt(0.0004 / 3 + 0.0001 / 3)) < 1e-12 and v == "reproduced"
    assert verdict(a, b, -1)[2] == "not reproduced"  # the claim says A is lower
    assert verdict({"per_seed": [0.5, 0.3, 0.4]}, {"per_seed": [0.38, 0.45, 0.36]}, 1)[2] == "within noise"
    assert verdict({"per_seed": [0.5]}, {"per_seed": [0.4]}, 1)[2] == "undetermined"


class _CacheHits(logging.Handler):
    """Counts the programs JAX reads back from its persistent compilation cache."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.modules: list[str] = []

    def emit(self, record):
        if record.getMessage().startswith("Persistent compilation cache hit"):
            self.modules.append(record.getMessage())


@pytest.fixture(scope="module")
def quick_demo_run(tmp_path_factory):
    """(workdir, persistent-cache hits) of the demo at the reduced size, in this process, on the suite's 8 CPU
    devices: its stage order (per seed: SFT -> GRPO -> OXA -> evaluate -> GRPO -> ...) is the one that deadlocked
    when the second GRPO's train step was read back from the persistent compilation cache."""
    work = tmp_path_factory.mktemp("demo")
    main = runpy.run_path(str(ROOT / "scripts" / "demo.py"))["main"]
    hits, compiler_log = _CacheHits(), logging.getLogger("jax._src.compiler")
    level = compiler_log.level
    compiler_log.addHandler(hits)
    compiler_log.setLevel(logging.DEBUG)
    try:
        assert main(["--quick", "--workdir", str(work), "--seeds", "0", "1"]) == 0
    finally:
        compiler_log.removeHandler(hits)
        compiler_log.setLevel(level)
    return work, hits.modules


@pytest.fixture(scope="module")
def quick_demo(quick_demo_run):
    return quick_demo_run[0]


def test_quick_demo_on_several_cpu_devices_compiles_its_programs_in_process(quick_demo_run):
    import jax

    assert jax.local_device_count() == 8 and jax.default_backend() == "cpu"
    work, cache_hits = quick_demo_run
    # a multi-device XLA:CPU program read back from the cache can run its collectives out of order (deadlock)
    assert cache_hits == []
    assert (work / "runs" / "oxa" / "seed1" / "grpo" / "hf_export" / "config.json").exists()


def test_quick_demo_writes_report_tables_and_plots(quick_demo):
    work = quick_demo
    report = (work / "REPORT.md").read_text()
    for png in ("passk.png", "entropy.png", "ppl_hist.png", "styles.png", "rl_reward.png"):
        assert (work / png).stat().st_size > 5000, png
        assert f"]({png})" in report
    table = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 8 and cells[1] in ("pretrained", "fine-tuned", "+ GRPO"):
            table[(cells[0], cells[1])] = cells[2:]
    expected = {("base model", "pretrained")}
    for label in ("SFT (random data)", "OXA", "CurioSFT", "SFT + entropy reg."):
        expected |= {(label, "fine-tuned"), (label, "+ GRPO")}
    assert set(table) == expected
    for key, cells in table.items():
        for c in cells:
            assert re.fullmatch(r"-?\d+(\.\d+)? ± \d+(\.\d+)?", c), (key, c)  # mean ± std over the two seeds
    res = json.loads((work / "results.json").read_text())
    verdicts = [line for line in report.splitlines() if line.startswith("| ") and "**" in line]
    assert len(verdicts) == len(res["claims"]) >= 7
    for row, claim in zip(verdicts, res["claims"]):
        assert f"**{claim['verdict']}**" in row and claim["claim"] in row


def test_quick_demo_results_schema_and_consistency(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    assert res["seeds"] == [0, 1]
    assert set(res["arms"]) == {"base", "sft", "oxa", "curio", "entropy_reg"}
    assert set(res["arms"]["base"]) == {"pretrained"}
    n = res["settings"]["eval_samples"]
    for arm, stages in res["arms"].items():
        if arm != "base":
            assert set(stages) == {"fine-tuned", "grpo"}
        for stage, row in stages.items():
            assert len(row["pass@1"]["per_seed"]) == 2
            assert abs(row["pass@1"]["mean"] - np.mean(row["pass@1"]["per_seed"])) < 1e-12
            assert set(row["pass@k"]) == {str(k) for k in range(1, n + 1)}
            curve = [row["pass@k"][str(k)]["mean"] for k in range(1, n + 1)]
            assert all(x <= y + 1e-12 for x, y in zip(curve, curve[1:]))  # Pass@k never falls with k
            assert abs(sum(v["mean"] for v in row["styles"].values()) - 1) < 1e-9
            assert set(row["entropy_by_class"]) == {"digit", "operator", "word", "fork"}
    for k in ("pass@1", "well_formed", "wrong_is_bug"):
        assert 0 <= res["base_checks"][k]["mean"] <= 1
    # the claims are recomputed from the per-seed numbers they quote
    from exploresft_jax.demo.report import verdict

    for c in res["claims"]:
        sign = -1 if "digit" in c["metric"] else 1
        assert verdict(c["a"], c["b"], sign)[2] == c["verdict"]
    assert set(res["rl_curves"]) == {"sft", "oxa", "curio", "entropy_reg"}
    oxa = [json.loads(line) for line in (quick_demo / "select" / "oxa.jsonl").read_text().splitlines()]
    assert {r["loss_type"] for r in oxa} == {"ce", "ul"}  # positives and the base model's own wrong answers
    assert all(r["teacher_correct"] for r in oxa if r["loss_type"] == "ce")
    assert not any(r["teacher_correct"] for r in oxa if r["loss_type"] == "ul")
    sel = res["selection"]
    assert sel["oxa_positives"]["ppl_mean"] > sel["teacher"]["ppl_mean"]
    for key, entry in res["runs"].items():
        if key.startswith("base/"):
            continue
        rows = [json.loads(line) for line in Path(entry["train_metrics"]).read_text().splitlines()]
        assert rows[-1]["step"] == res["settings"]["ft_steps"], key


def test_sweep_scores_on_validation_and_records_its_choice(quick_demo, tmp_path):
    from exploresft_jax.demo import DemoSettings, sweep

    grid = {"sft": {"lr": (3e-4, 1e-3), "coef": (0.0,)}}
    out = sweep(DemoSettings.quick(), quick_demo, grid=grid, grpo_lrs=(1e-3,), record=tmp_path / "choices.json")
    rows = out["scores"]["sft"]
    assert [r["lr"] for r in rows] == [3e-4, 1e-3]
    best = max(rows, key=lambda r: r["score"])
    assert out["choices"]["sft"] == {"lr": best["lr"], "coef": 0.0} and out["choices"]["grpo"] == {"lr": 1e-3}
    assert json.loads((tmp_path / "choices.json").read_text())["choices"] == out["choices"]
    for r in rows:
        assert r["score"] == (r["pass@1"] + r[f"pass@{out['val_samples']}"]) / 2
    val = {json.loads(x)["prompt"] for x in (quick_demo / "data" / "val.jsonl").read_text().splitlines()}
    held = {json.loads(x)["prompt"] for x in (quick_demo / "data" / "eval.jsonl").read_text().splitlines()}
    assert val and not val & held
    # each grid point trains at its own learning rate: same schedule and logged steps, scaled by the peak lr
    def peak_lr(log):
        return max(json.loads(x).get("lr", 0.0) for x in log.read_text().splitlines())

    sft_logs = [quick_demo / "sweep" / "sft" / f"lr{r['lr']:g}_coef0" / "metrics.jsonl" for r in rows]
    assert peak_lr(sft_logs[1]) / peak_lr(sft_logs[0]) == pytest.approx(1e-3 / 3e-4, rel=1e-4)
    grpo_log = next((quick_demo / "sweep" / "grpo").glob("from_sft_*/lr0.001/metrics.jsonl"))
    assert peak_lr(grpo_log) == pytest.approx(1e-3, rel=1e-5)


def test_pretrain_rebuilds_a_base_model_with_its_recipe_and_checks(tmp_path):
    from exploresft_jax.demo import DemoSettings
    from exploresft_jax.demo.base_model import PretrainRecipe
    from exploresft_jax.demo.pipeline import rebuild_base

    recipe = PretrainRecipe(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, bpe_vocab=300,
                            corpus_problems=64, steps=3, rows=4, row_length=128)
    s = DemoSettings.quick()
    checks = rebuild_base(s, tmp_path / "base", tmp_path / "work", recipe=recipe)
    meta = json.loads((tmp_path / "base" / "recipe.json").read_text())
    assert meta["recipe"]["steps"] == 3 and meta["base_checks"] == checks
    assert (tmp_path / "base" / "model.safetensors").exists() and (tmp_path / "base" / "tokenizer.json").exists()
    assert checks["samples"] == s.eval_samples and 0 <= checks["pass@1"] <= 1
    corpus = {json.loads(x)["prompt"] for x in (tmp_path / "work" / "pretrain" / "base.jsonl").read_text().splitlines()}
    from exploresft_jax.demo.base_model import reserved_prompts

    assert not corpus & reserved_prompts()  # no held-out, validation, teacher or RL problem in the corpus
