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
from exploresft_jax.demo import claims
from exploresft_jax.demo.report import per_seed_values
from exploresft_jax.rewards import check_batch

ROOT = Path(__file__).resolve().parents[2]


def test_word_problems_tiers_orders_and_buggy_solutions():
    probs = wp.problems(60, seed=3)
    assert len({p["prompt"] for p in probs}) == 60
    assert [p["tier"] for p in probs[:6]] == [2, 3, 4, 2, 3, 4]  # prefixes hold the tiers in equal shares
    for p in probs:
        assert len(p["steps"]) == p["tier"] and p["prompt"].count(" then ") == p["tier"] - 1
        assert int(p["answer"]) == p["start"] + sum(y if op == "+" else -y for op, y in p["steps"])
    teacher = wp.teacher_solutions(probs)
    assert len(teacher) > 1.8 * len(probs) and len({r["response"] for r in teacher}) == len(teacher)
    verdicts = check_batch([r["answer"] for r in teacher], [r["response"] for r in teacher])
    assert all(v.status == "correct" for v in verdicts)
    # every order of the steps reaches the answer, with any links between the steps
    p = next(p for p in probs if p["tier"] == 4)
    for order in wp.orders(p["start"], p["steps"]):
        text, value = wp.solve(p["start"], order, links=(1, 2, 3))
        assert str(value) == p["answer"] and text.count("Next ") == 1 and text.count("So ") == 1
    # the bug drops every carry and borrow: the tens never move
    text, value = wp.solve(57, [("+", 6), ("-", 9)], buggy=True)
    assert text == "57 + 6 = 53. Then 53 - 9 = 54. The answer is \\boxed{54}." and value == 54
    assert wp.solve(57, [("+", 6), ("-", 9)])[1] == 54  # (here it cancels out)
    assert wp.solve(57, [("+", 6), ("+", 8)], buggy=True)[1] == 51 and wp.carries(57, [("+", 6), ("+", 8)]) == 2
    assert wp.carries(41, [("+", 2), ("-", 1)]) == 0


def test_base_corpus_drops_carries_on_the_harder_tiers_only():
    base = wp.base_corpus(3000, seed=1)
    share = {k: np.mean([r["buggy"] for r in base if r["tier"] == k]) for k in wp.TIERS}
    tiers = {k: np.mean([r["tier"] == k for r in base]) for k in wp.TIERS}
    for k, rate, prob in zip(wp.TIERS, wp.BASE_BUG_RATES, wp.BASE_TIER_PROBS):
        assert abs(share[k] - rate) < 0.06 and abs(tiers[k] - prob) < 0.03, k
    for r in base:  # a solution is right exactly when it is not buggy or had nothing to carry
        value = int(r["response"].rsplit("{", 1)[1].split("}")[0])
        if not r["buggy"]:
            assert str(value) == r["answer"]
    held = wp.problems(10, seed=9, exclude={r["prompt"] for r in base})
    assert not {p["prompt"] for p in held} & {r["prompt"] for r in base}


def test_bug_values_are_the_dropped_carry_results_in_any_order():
    # 57 + 6 carries (63; dropped: 53), then + 8 carries again (71; from 53: 61, dropped at both: 51)
    assert wp.bug_values(57, [("+", 6), ("+", 8)]) == {51, 61}
    # 40 - 3 - 9 = 28: dropping the borrow at some steps, in either order
    assert wp.bug_values(40, [("-", 3), ("-", 9)]) == {38, 48}
    assert wp.bug_values(41, [("+", 2), ("-", 1)]) == set()  # no carry, no borrow: the bug changes nothing
    for p in wp.problems(30, seed=4):
        full_bug = wp.solve(p["start"], p["steps"], buggy=True)[1]
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


def test_token_classes_mark_results_choices_and_links():
    from exploresft_jax.demo.base_model import SHIPPED
    from exploresft_jax.demo.pipeline import TOKEN_CLASSES, token_classes
    from exploresft_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(SHIPPED)
    text = "57 - 9 = 48. Now 48 + 6 = 54. The answer is \\boxed{54}."
    ids = np.asarray([tok.encode(text)])
    cls = token_classes(tok, ids, np.asarray([ids.shape[1] - 2]))
    pieces = [tok.decode([t]) for t in ids[0]]
    names = dict(enumerate(TOKEN_CLASSES))
    by = {n: "".join(p for p, c in zip(pieces, cls[0]) if names.get(int(c)) == n).split() for n in TOKEN_CLASSES}
    assert by["result"] == ["48", "54"] or "".join(by["result"]) == "4854"
    assert "".join(by["choice"]).replace(" ", "") == "-9+6"
    assert by["link"] == ["Now"]
    assert (cls[0, -2:] == -1).all()  # past the row's length


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
    for png in ("passk.png", "tiers.png", "entropy.png", "ppl_hist.png", "rl_reward.png"):
        assert (work / png).stat().st_size > 5000, png
        assert f"]({png})" in report
    table = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 10 and cells[1] in ("pretrained", "fine-tuned", "+ GRPO"):
            table[(cells[0], cells[1])] = cells[2:]
    expected = {("base model", "pretrained")}
    for label in ("SFT (random data)", "OXA", "OXA-MLE (no UL)", "CurioSFT", "SFT + entropy reg."):
        expected |= {(label, "fine-tuned"), (label, "+ GRPO")}
    assert set(table) == expected
    for key, cells in table.items():
        for c in cells:
            assert re.fullmatch(r"-?\d+(\.\d+)? ± \d+(\.\d+)?", c), (key, c)  # mean ± std over the two seeds
    res = json.loads((work / "results.json").read_text())
    papers = {c.paper for c in claims.CLAIMS}
    verdicts = [line for line in report.splitlines()
                if line.startswith("| ") and line.split("|")[1].strip() in papers and line.endswith("** |")]
    assert len(verdicts) == len(res["claims"]) == len(claims.CLAIMS)
    for row, claim in zip(verdicts, res["claims"]):
        assert f"**{claim['verdict']}**" in row and claim["claim"] in row
    gates = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip()
             in claims.GATES]
    assert len(gates) == len(claims.GATES)
    assert "Welch" in report and "untestable" in report


def test_quick_demo_results_schema_and_consistency(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    s = res["settings"]
    assert res["seeds"] == [0, 1]
    assert res["eval"] == {"problems": s["eval_problems"], "samples": s["eval_samples"],
                           "temperature": s["eval_temperature"], "claim_k": s["claim_k"]}
    assert set(res["arms"]) == {"base", "sft", "oxa", "oxa_mle", "curio", "entropy_reg"}
    assert set(res["arms"]["base"]) == {"pretrained"}
    n = s["eval_samples"]
    for arm, stages in res["arms"].items():
        if arm != "base":
            assert set(stages) == {"fine-tuned", "grpo"}
        for stage, row in stages.items():
            assert len(row["pass@1"]["per_seed"]) == 2
            assert abs(row["pass@1"]["mean"] - np.mean(row["pass@1"]["per_seed"])) < 1e-12
            assert set(row["pass@k"]) == {str(k) for k in range(1, n + 1)}
            curve = [row["pass@k"][str(k)]["mean"] for k in range(1, n + 1)]
            assert all(x <= y + 1e-12 for x, y in zip(curve, curve[1:]))  # Pass@k never falls with k
            assert set(row["pass@1_by_tier"]) == {"2", "3", "4"}
            assert set(row["entropy_tf"]) == {"all", "result", "choice", "link", "other"}
            assert row["entropy_tf"]["all"]["mean"] > 0
    assert set(res["premise"]) == set(claims.GATES)
    for g in res["premise"].values():
        assert set(g) == {"value", "required", "met"}
    base, sft = res["arms"]["base"]["pretrained"], res["arms"]["sft"]["fine-tuned"]
    assert res["premise"]["teacher_gain"]["value"] == pytest.approx(sft["pass@1"]["mean"] - base["pass@1"]["mean"])
    assert res["premise"]["teacher_gain"]["met"] == (res["premise"]["teacher_gain"]["value"] >= 0.05)
    # every claim is listed, and its verdict is recomputed from the per-seed values it quotes
    assert [c["claim"] for c in res["claims"]] == [c.claim for c in claims.CLAIMS]
    for c, spec in zip(res["claims"], claims.CLAIMS):
        assert c["verdict"] != "not run"  # the quick run measures every claim, GRPO included
        w, v = claims.verdict(c["a_per_seed"], c["b_per_seed"], c["direction"])
        assert c["difference"] == pytest.approx(w["difference"]) and c["critical_value"] == pytest.approx(
            w["critical_value"], nan_ok=True)
        if spec.gate and not res["premise"][spec.gate]["met"]:
            assert c["verdict"] == "untestable"
        elif not (c["metric"].startswith("pass@") and min(np.mean(c["a_per_seed"]), np.mean(c["b_per_seed"])) >= 0.98):
            assert c["verdict"] == v
        arms = res["arms"]
        a_stat = per_seed_values(arms, c["a"], c["stage"], c["metric"])
        assert a_stat == c["a_per_seed"]
    assert set(res["rl_curves"]) == {"sft", "oxa", "oxa_mle", "curio", "entropy_reg"}
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
        assert rows[-1]["step"] == s["ft_steps"], key
        if key.startswith("oxa_mle/"):
            assert "ul" not in rows[-1] or rows[-1]["ul"] == 0  # no negatives in its batches
        if key.startswith("oxa/"):
            assert rows[-1].get("ul", 0) > 0


def test_sweep_scores_on_validation_and_records_its_choice(quick_demo, tmp_path):
    from exploresft_jax.demo import DemoSettings, sweep

    grid = {"sft": {"lr": (3e-4, 1e-3), "coef": (0.0,)}}
    out = sweep(DemoSettings.quick(), quick_demo, grid=grid, grpo_lrs=(1e-3,), record=tmp_path / "choices.json")
    rows = out["scores"]["sft"]
    assert [r["lr"] for r in rows] == [3e-4, 1e-3]
    best = max(rows, key=lambda r: r["score"])
    assert out["choices"]["sft"] == {"lr": best["lr"], "coef": 0.0} and out["choices"]["grpo"] == {"lr": 1e-3}
    assert json.loads((tmp_path / "choices.json").read_text())["choices"] == out["choices"]
    k = min(DemoSettings.quick().claim_k, out["val_samples"])
    for r in rows:
        assert r["score"] == (r["pass@1"] + r[f"pass@{k}"]) / 2
    assert out["at_edge"]["sft"] == ["lr"]  # two learning rates: the choice is at an edge of its grid
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


def test_publish_full_writes_docs_demo_full_and_leaves_readme_alone(quick_demo, tmp_path):
    # the quick run trains GRPO like --full: its report, plots and results go to docs/demo/full, no README needed
    from exploresft_jax.demo.pipeline import publish

    main = runpy.run_path(str(ROOT / "scripts" / "demo.py"))["main"]
    out = publish(quick_demo, tmp_path, full=True)
    assert out == tmp_path / "docs" / "demo" / "full" and not (tmp_path / "README.md").exists()
    assert (out / "REPORT.md").read_text() == (quick_demo / "REPORT.md").read_text()
    assert {p.name for p in out.glob("*.png")} == {p.name for p in quick_demo.glob("*.png")}
    res = json.loads((out / "results.json").read_text())
    assert "runs" not in res and res["claims"] == json.loads((quick_demo / "results.json").read_text())["claims"]
    default = tmp_path / "default_run"
    default.mkdir()
    (default / "results.json").write_text(json.dumps({**res, "settings": {**res["settings"], "grpo": False}}))
    with pytest.raises(ValueError, match=r"default_run/results\.json: not a --full run"):
        main(["--publish-full", str(default)])


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


def test_a_workdir_refuses_a_run_of_other_settings(tmp_path):
    # finished stages are reused by file name: a default run's workdir must not feed a --full run's stages
    from exploresft_jax.demo import DemoSettings
    from exploresft_jax.demo.pipeline import claim_workdir

    claim_workdir(DemoSettings.default(), tmp_path)
    claim_workdir(DemoSettings.default(), tmp_path)  # the same settings: reused
    with pytest.raises(ValueError, match=r"settings\.json: .*eval_problems 128 here, 384 now.*another --workdir"):
        claim_workdir(DemoSettings.full(), tmp_path)
    assert json.loads((tmp_path / "settings.json").read_text())["eval_problems"] == 128  # left as it was
