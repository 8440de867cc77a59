"""A tiny HuggingFace-format Qwen2 folder (random weights + an offline BPE tokenizer with the Qwen chat template)."""

from __future__ import annotations

from pathlib import Path

from exploresft_jax.models.tokenizer import load_tokenizer, train_bpe_tokenizer

from .hf_fixtures import make_hf_qwen2

CORPUS = [
    "Question: what is 12 + 35? Let's add the tens then the ones: 10 + 30 = 40, 2 + 5 = 7, so \\boxed{47}.",
    "Compute 7 * 8. Seven eights are fifty-six. The answer is \\boxed{56}.",
    "If x + 3 = 10 then x = 7. Final answer: \\boxed{7}",
    "The sum of the angles of a triangle is 180 degrees; the remaining angle is 180 - 60 - 70 = 50.",
] * 20


def make_tiny_folder(folder: Path, *, vocab_size: int = 320, seed: int = 0, **model_kw):
    """Writes tokenizer + model into `folder`; returns (the tokenizer as reloaded from it, float32 torch model)."""
    tok = train_bpe_tokenizer(CORPUS, vocab_size=vocab_size)
    tok.save_pretrained(folder)
    model = make_hf_qwen2(folder, vocab=len(tok), seed=seed, **model_kw)
    return load_tokenizer(folder), model
