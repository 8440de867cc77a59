"""Tokenizer helpers: chat template, prompt/response masks, stop ids."""

from __future__ import annotations

import numpy as np
import pytest

from exploresft_jax.models.tokenizer import chat_prompt, encode_prompt_response, stop_token_ids, train_bpe_tokenizer

from .tiny_folder import CORPUS


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


def test_chat_prompt_renders_qwen_chatml(tok):
    text = chat_prompt(tok, "What is 6*7?", system="Be brief.")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 6*7?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_response_mask_covers_exactly_the_assistant_turn(tok):
    ids, mask = encode_prompt_response(tok, "What is 6*7?", "6*7 = \\boxed{42}")
    assert ids.dtype == np.int32 and ids.shape == mask.shape
    assert tok.decode(ids[mask == 1]) == "6*7 = \\boxed{42}<|im_end|>\n"
    assert tok.decode(ids[mask == 0]).endswith("<|im_start|>assistant\n")
    assert set(np.unique(mask)) == {0, 1} and np.all(np.diff(mask) >= 0)  # prompt first, then response


def test_raw_mode_and_message_lists(tok):
    ids, mask = encode_prompt_response(tok, "Q: 1+1? A:", " 2", chat_template=False)
    assert tok.decode(ids[mask == 1]) == " 2" and tok.decode(ids[mask == 0]) == "Q: 1+1? A:"
    msgs = [{"role": "user", "content": "hi"}]
    ids2, mask2 = encode_prompt_response(tok, msgs, "ok")
    assert tok.decode(ids2[mask2 == 1]) == "ok<|im_end|>\n"
    with pytest.raises(ValueError, match="role"):
        encode_prompt_response(tok, [{"content": "no role"}], "x")


def test_stop_ids(tok):
    ids = stop_token_ids(tok)
    assert [tok.convert_ids_to_tokens(i) for i in ids] == ["<|im_end|>", "<|endoftext|>"]
