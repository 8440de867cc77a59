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


# A ChatML template that, like Qwen2.5-Math's, inserts its own system turn when the messages carry none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nPlease reason step by step, and put your final answer within "
    "\\\\boxed{}.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def math_tok():
    return train_bpe_tokenizer(["hello world 1 + 2 = 3"] * 4, vocab_size=300, chat_template=DEFAULT_SYSTEM_TEMPLATE)


def test_system_turn_none_default_or_given(math_tok):
    from exploresft_jax.models.tokenizer import chat_prompt

    assert chat_prompt(math_tok, "q").startswith("<|im_start|>system\nPlease reason")  # the template's default
    assert chat_prompt(math_tok, "q", "default") == chat_prompt(math_tok, "q")
    assert chat_prompt(math_tok, "q", "none") == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt(math_tok, "q", "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    # a message list that brings its own system turn keeps it, whatever the option
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]
    assert chat_prompt(math_tok, msgs, "none").startswith("<|im_start|>system\nS<|im_end|>")
    ids, mask = encode_prompt_response(math_tok, "q", "3", system="none")
    assert "Please reason" not in math_tok.decode(ids) and math_tok.decode(ids[mask == 1]) == "3<|im_end|>\n"


def test_training_records_take_the_system_option_and_the_suffix_on_message_lists(math_tok):
    from exploresft_jax.data import pipeline

    recs = [{"prompt": "q", "response": "3"}, {"prompt": [{"role": "user", "content": "q"}], "response": "3"},
            {"prompt": "q SUFFIX", "response": "3"}]
    pool = pipeline.tokenize_records(recs, math_tok, max_length=256, system_prompt="none", prompt_suffix=" SUFFIX")
    texts = [math_tok.decode(x) for x in pool.ids]
    assert all(t == "<|im_start|>user\nq SUFFIX<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n" for t in texts), texts
