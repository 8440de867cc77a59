"""Tiny HuggingFace-format folders (random weights + an offline BPE tokenizer with the family's chat format): Qwen2
(ChatML), Qwen3 (ChatML with thinking tags) and Llama 3 (header format)."""

from __future__ import annotations

from pathlib import Path

from exploresft_jax.models.tokenizer import (
    LLAMA3_CHAT_TEMPLATE,
    LLAMA3_SPECIAL_TOKENS,
    load_tokenizer,
    train_bpe_tokenizer,
)

from .hf_fixtures import make_hf_model

CORPUS = [
    "Question: what is 12 + 35? Let's add the tens then the ones: 10 + 30 = 40, 2 + 5 = 7, so \\boxed{47}.",
    "Compute 7 * 8. Seven eights are fifty-six. The answer is \\boxed{56}.",
    "If x + 3 = 10 then x = 7. Final answer: \\boxed{7}",
    "The sum of the angles of a triangle is 180 degrees; the remaining angle is 180 - 60 - 70 = 50.",
] * 20

# ChatML whose assistant turns carry Qwen3's thinking block: the text before '</think>' is the reasoning, rendered
# as '<think>\n...\n</think>\n\n' ahead of the answer (an empty block when there is none), as Qwen3's template
# renders the last assistant turn.
QWEN3_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{% endif %}"
    "{{ '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN3_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def family_tokenizer(family: str, vocab_size: int = 320):
    """An offline BPE tokenizer on CORPUS with `family`'s special tokens and chat format."""
    if family == "llama":
        return train_bpe_tokenizer(CORPUS, vocab_size=vocab_size, chat_template=LLAMA3_CHAT_TEMPLATE,
                                   special_tokens=LLAMA3_SPECIAL_TOKENS, eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>", bos_token="<|begin_of_text|>")
    if family == "qwen3":
        return train_bpe_tokenizer(CORPUS, vocab_size=vocab_size, chat_template=QWEN3_STYLE_TEMPLATE,
                                   special_tokens=QWEN3_SPECIAL_TOKENS)
    return train_bpe_tokenizer(CORPUS, vocab_size=vocab_size)


def make_tiny_folder(folder: Path, *, vocab_size: int = 320, seed: int = 0, family: str = "qwen2", **model_kw):
    """Writes tokenizer + model into `folder`; returns (the tokenizer as reloaded from it, float32 torch model)."""
    tok = family_tokenizer(family, vocab_size)
    tok.save_pretrained(folder)
    model = make_hf_model(folder, family, vocab=len(tok), seed=seed, **model_kw)
    return load_tokenizer(folder), model
