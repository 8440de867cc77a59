"""scripts/generate.py: output contract, greedy text equal to transformers `generate`, seeded sampling (the same
with a paged KV cache), raw prompts with stop strings, and one-line errors on bad input."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from exploresft_jax import cli
from exploresft_jax.models.tokenizer import chat_prompt, stop_token_ids

from ..models.tiny_folder import make_tiny_folder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate.py"
PROMPTS = ["What is 12 + 35?", [{"role": "user", "content": "Compute 7 * 8."}], "x + 3 = 10"]
MAX_NEW = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_gen")
    tok, torch_model = make_tiny_folder(folder, vocab_size=200)
    data = folder / "in.jsonl"
    with open(data, "w") as f:
        for i, p in enumerate(PROMPTS):
            f.write(json.dumps({"id": i, "prompt": p, "answer": str(i)}) + "\n")
    return folder, tok, torch_model, data


def _main():
    return runpy.run_path(str(SCRIPT))["main"]


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _hf_greedy_text(tok, torch_model, text):
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = torch_model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_NEW,
                                   pad_token_id=tok.pad_token_id, eos_token_id=stop_token_ids(tok))
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_greedy_chat_matches_transformers(setup, tmp_path):
    folder, tok, torch_model, data = setup
    out = tmp_path / "out.jsonl"
    assert _main()(["--model", str(folder), "--input", str(data), "--output", str(out), "--temperature", "0",
                    "--max-new-tokens", str(MAX_NEW)]) == 0
    rows = _read(out)
    assert [r["id"] for r in rows] == [0, 1, 2] and all(r["answer"] == str(r["id"]) for r in rows)
    for r, p in zip(rows, PROMPTS):
        (c,) = r["completions"]
        assert set(c) == {"text", "num_tokens", "logprob", "finish_reason"}
        assert c["text"] == _hf_greedy_text(tok, torch_model, chat_prompt(tok, p))
        assert 1 <= c["num_tokens"] <= MAX_NEW and c["logprob"] < 0
        assert c["finish_reason"] == ("length" if c["num_tokens"] == MAX_NEW else "stop")


def test_seeded_samples_raw_prompts_and_stop_strings(setup, tmp_path):
    folder, _, _, data = setup
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS if isinstance(p, str)))
    args = ["--model", str(folder), "--input", str(raw), "--n", "3", "--temperature", "0.9", "--top-p", "0.95",
            "--max-new-tokens", str(MAX_NEW), "--no-chat-template", "--dtype", "float32"]
    main = _main()
    outs = [tmp_path / f"o{i}.jsonl" for i in range(3)]
    assert main(args + ["--output", str(outs[0]), "--seed", "5"]) == 0
    assert main(args + ["--output", str(outs[1]), "--seed", "5"]) == 0
    first, again = _read(outs[0]), _read(outs[1])
    assert first == again  # same seed, same samples
    paged = tmp_path / "paged.jsonl"  # a paged KV cache of 6 pages of 8 entries per device: the same samples
    assert main(args + ["--output", str(paged), "--seed", "5", "--kv-pages", "6", "--page-size", "8"]) == 0
    got, want = ([c for r in rows for c in r["completions"]] for rows in (_read(paged), first))
    assert [dict(c, logprob=0) for c in got] == [dict(c, logprob=0) for c in want]
    assert [c["logprob"] for c in got] == pytest.approx([c["logprob"] for c in want], rel=1e-5)  # summed in float32
    texts = [c["text"] for c in first[0]["completions"]]
    assert len(texts) == 3 and len(set(texts)) == 3  # n samples differ
    # a stop string taken from inside the first completion: the text is cut right before it
    text = texts[0]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(stop) == 3
    assert main(args + ["--output", str(outs[2]), "--seed", "5", "--stop", stop]) == 0
    cut = _read(outs[2])[0]["completions"][0]
    assert cut["text"] == text[:text.find(stop)] and cut["finish_reason"] == "stop"
    assert cut["num_tokens"] <= first[0]["completions"][0]["num_tokens"]


def test_bad_input_one_line_error(setup, tmp_path, capsys):
    folder, _, _, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"question": "no prompt"}) + "\n")
    rc = cli.run(_main(), ["--model", str(folder), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{bad}:2" in err[0] and "prompt" in err[0]
    msgs = tmp_path / "msgs.jsonl"
    msgs.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n")
    rc = cli.run(_main(), ["--model", str(folder), "--input", str(msgs), "--output", str(tmp_path / "o.jsonl"),
                           "--no-chat-template"])
    assert rc == 2 and f"{msgs}:1" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
