"""Records, importers and the step-indexed input pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exploresft_jax.data import pipeline
from exploresft_jax.data.jsonl import RecordError
from exploresft_jax.data.records import load_records
from exploresft_jax.models.tokenizer import train_bpe_tokenizer

from ..models.tiny_folder import CORPUS


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


def test_importers_normalise_every_form(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text(
        json.dumps({"instruction": "Add 2 and 3.", "output": "5", "loss_type": 1}) + "\n"
        + json.dumps({"prompt": "1+1?", "response": "2", "weight": 0.5, "answer": "2"}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "r"}]}]))
    pq.write_table(pa.Table.from_pylist([{
        "prompt": [{"role": "user", "content": "What is 7*8?"}],
        "target": [{"role": "assistant", "content": "<think>\n56"}],
        "reward_model": {"ground_truth": "56"}}]), tmp_path / "c.parquet")
    recs = load_records([tmp_path / "a.jsonl", tmp_path / "b.json", tmp_path / "c.parquet"])
    assert recs[0] == {"prompt": "Add 2 and 3.", "response": "5", "loss_type": "ul", "weight": 1.0}
    assert recs[1]["weight"] == 0.5 and recs[1]["loss_type"] == "ce" and recs[1]["answer"] == "2"
    assert recs[2]["prompt"] == [{"role": "user", "content": "q"}] and recs[2]["response"] == "r"
    assert recs[3]["response"] == "<think>\n56" and recs[3]["answer"] == "56"


@pytest.mark.parametrize("line,needle", [
    ('{"prompt": "x"}', "'response'"),
    ('{"prompt": "x", "response": "y", "loss_type": "maybe"}', "'loss_type'"),
    ('{"prompt": "x", "response": "y", "weight": -1}', "'weight'"),
    ('not json', "invalid JSON"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "assistant"),
    ('{"prompt": [], "response": "y"}', "'prompt' is an empty list"),
])
def test_bad_records_name_file_line_and_field(tmp_path, line, needle):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "ok", "response": "ok"}\n\n' + line + "\n")
    with pytest.raises(RecordError) as e:
        load_records(f)
    assert f"{f}:3" in str(e.value) and needle in str(e.value)


def _pool(tok, n, seed=0, prefix="p"):
    rng = np.random.default_rng(seed)
    recs = [{"prompt": f"{prefix}{i}: {'x ' * int(rng.integers(1, 4))}", "response": "y " * int(rng.integers(1, 8))}
            for i in range(n)]
    pool = pipeline.tokenize_records(recs, tok, max_length=40)
    assert len(pool) == n and pool.dropped == 0
    return pool


def test_length_filter_counts(tok):
    recs = [{"prompt": "q", "response": "word " * n} for n in (1, 5, 80, 200)]
    dropped = pipeline.tokenize_records(recs, tok, max_length=64)
    assert len(dropped) == 2 and dropped.dropped == 2 and dropped.truncated == 0
    cut = pipeline.tokenize_records(recs, tok, max_length=64, overlong="truncate")
    assert len(cut) == 4 and cut.truncated == 2 and max(len(x) for x in cut.ids) == 64


def test_oxa_steps_hold_fixed_counts_and_resume_exactly(tok):
    ce, ul = _pool(tok, 10), _pool(tok, 7, seed=1, prefix="n")
    src = pipeline.StepSource([(ce, 4, False), (ul, 2, True)], max_length=40, micro_batches=2, pad_id=0, seed=3)
    seen_ce = []
    for step in range(6):
        b = src[step]
        assert all(b[k].shape == (2, 3, 40) for k in pipeline.ROW_KEYS)
        row_neg = b["is_negative"].max(-1)
        np.testing.assert_array_equal(b["is_negative"], row_neg[..., None] * (b["segment_ids"] > 0))
        assert (row_neg.sum(1) == 1).all()  # every micro-batch: 2 CE + 1 UL
        for row, neg in zip(b["tokens"].reshape(6, 40), row_neg.reshape(6)):
            if not neg:
                seen_ce.append(tuple(row))
    # 24 CE rows = 2.4 epochs of 10 examples: the first 10 and the next 10 are each a permutation of the pool
    first, second = set(seen_ce[:10]), set(seen_ce[10:20])
    assert len(first) == 10 and first == second and seen_ce[:10] != seen_ce[10:20]
    ds = pipeline.make_dataset(src)
    it = iter(ds)
    [next(it) for _ in range(3)]
    state = it.get_state()
    expected = next(it)
    it2 = iter(pipeline.make_dataset(src))
    it2.set_state(state)
    got = next(it2)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_rows_shift_labels_and_mask_only_response(tok):
    ce = _pool(tok, 3)
    row = pipeline.build_row(ce, [0], 40, pad_id=0)
    n = len(ce.ids[0])
    np.testing.assert_array_equal(row["labels"][:n - 1], ce.ids[0][1:])
    np.testing.assert_array_equal(row["loss_mask"][:n - 1], ce.targets[0][1:])
    assert row["loss_mask"][n - 1:].sum() == 0 and (row["segment_ids"][:n] == 1).all()
    counted = ce.targets[0][1:].sum()
    np.testing.assert_allclose(row["sample_norm"][:n - 1], ce.targets[0][1:] / counted)
    assert row["sample_norm"][n - 1:].sum() == 0 and row["weight"][:n].min() == 1 and row["weight"][n:].max() == 0


def test_packing_gives_segments_and_restarted_positions(tok, monkeypatch):
    # small packing windows, so that epochs pack into different numbers of rows
    monkeypatch.setattr(pipeline, "TOKEN_PACK_WINDOW", 5)
    ce = _pool(tok, 12)
    src = pipeline.StepSource([(ce, 2, False)], max_length=96, micro_batches=1, pad_id=0, seed=0, packing=True)
    b = src[0]
    for r in range(2):
        seg, pos, mask = b["segment_ids"][0, r], b["positions"][0, r], b["loss_mask"][0, r]
        for s in range(1, seg.max() + 1):
            idx = np.where(seg == s)[0]
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            assert mask[idx[-1]] == 0  # a segment's last token never predicts the next segment
    assert b["segment_ids"].max() > 1  # several examples share a row
    units = src._epoch_units(0, 0)
    assert sorted(i for u in units for i in u) == list(range(12))
    # across many epochs (whose packed row counts differ) every epoch still covers every example exactly once
    counts = {len(src._epoch_units(0, e)) for e in range(12)}
    rows = [tuple(map(tuple, src[s]["tokens"][0])) for s in range(60)]  # 120 rows: several epochs
    assert len(rows) == 60 and len(counts) > 1
    start = 0
    for e in range(3):
        units = src._epoch_units(0, e)
        got = [i for u in src._take(0, start, len(units)) for i in u]
        assert sorted(got) == list(range(12))
        start += len(units)
    # two pools (OXA): each row holds examples of one pool only
    two = pipeline.StepSource([(ce, 2, False), (ce, 2, True)], max_length=96, micro_batches=1, pad_id=0, seed=0,
                              packing=True)
    neg, seg = two[0]["is_negative"][0], two[0]["segment_ids"][0]
    assert seg.max() > 1 and all(len(set(neg[r][seg[r] > 0])) == 1 for r in range(4))
    assert sorted(set(neg.max(-1))) == [0, 1]


def test_process_slices_partition_the_global_batch(tok):
    ce = _pool(tok, 16)
    full = pipeline.StepSource([(ce, 8, False)], max_length=40, micro_batches=2, pad_id=0, seed=1)[0]
    parts = [pipeline.StepSource([(ce, 8, False)], max_length=40, micro_batches=2, pad_id=0, seed=1, process_index=p,
                                 process_count=2)[0] for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["tokens"] for p in parts], axis=1), full["tokens"])


def test_prompt_filter_and_response_truncation_as_curiosft_release(tok):
    """Prompts over max_prompt_length are dropped; responses over max_response_length are cut to it (the prompt
    kept whole); both are counted, and the cut example stays under max_length instead of being dropped."""
    recs = [{"prompt": "q", "response": "word " * 3}, {"prompt": "long " * 40, "response": "ok"},
            {"prompt": "q", "response": "word " * 200}]
    # token counts with this tokenizer: 35 (18 of prompt), 181 (177 of prompt), 1020 (18 of prompt)
    plain = pipeline.tokenize_records(recs, tok, max_length=256)
    assert len(plain) == 2 and plain.dropped == 1  # today's rule alone drops the long response
    pool = pipeline.tokenize_records(recs, tok, max_length=256, max_prompt_length=64, max_response_length=20)
    assert len(pool) == 2 and pool.dropped == 1 and pool.truncated == 1
    short, cut = pool.targets
    n_prompt_cut = int(np.argmax(cut > 0))
    assert len(pool.ids[1]) - n_prompt_cut == 20 and cut[n_prompt_cut:].all()
    assert len(pool.ids[0]) == len(plain.ids[0])  # an example within both limits is untouched
