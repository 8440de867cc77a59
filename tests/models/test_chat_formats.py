"""Chat formats of the supported families through the tokenizer's own template: prompt / response masks and stop
tokens for Qwen2 (ChatML), Qwen3 (thinking tags) and Llama 3 (header format)."""

from __future__ import annotations

import numpy as np
import pytest

from exploresft_jax.models.tokenizer import chat_prompt, encode_prompt_response, stop_token_ids

from .tiny_folder import family_tokenizer

RESPONSE = "7 + 5 = 12, so \\boxed{12}."


@pytest.mark.parametrize("family,turn_end,header", [
    ("qwen2", "<|im_end|>", "<|im_start|>assistant\n"),
    ("qwen3", "<|im_end|>", "<|im_start|>assistant\n"),
    ("llama", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
])
def test_response_mask_covers_the_assistant_turn_and_its_end_token(family, turn_end, header):
    tok = family_tokenizer(family)
    ids, mask = encode_prompt_response(tok, "What is 7 + 5?", RESPONSE, system="You are careful.")
    prompt_text = tok.decode(ids[mask == 0])
    response_text = tok.decode(ids[mask == 1])
    assert prompt_text.endswith(header) and "You are careful." in prompt_text and "What is 7 + 5?" in prompt_text
    assert response_text.rstrip("\n").endswith(turn_end)
    assert response_text.startswith(RESPONSE if family != "qwen3" else "<think>")
    assert mask[:len(mask) - int(mask.sum())].sum() == 0 and mask[-1] == 1  # one contiguous response at the end
    assert tok.convert_tokens_to_ids(turn_end) in stop_token_ids(tok)
    assert chat_prompt(tok, "What is 7 + 5?", system="You are careful.") == prompt_text
    if family == "llama":
        assert prompt_text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
        assert ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")  # rendered once, by the template
        assert int(np.sum(ids == ids[0])) == 1
        assert set(stop_token_ids(tok)) >= {tok.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>")}


def test_qwen3_thinking_block_is_part_of_the_trained_response():
    tok = family_tokenizer("qwen3")
    ids, mask = encode_prompt_response(tok, "What is 7 + 5?", "<think>\n7 plus 5\n</think>\n\n" + RESPONSE)
    response = tok.decode(ids[mask == 1])
    assert response == "<think>\n7 plus 5\n</think>\n\n" + RESPONSE + "<|im_end|>\n"
    ids, mask = encode_prompt_response(tok, "What is 7 + 5?", RESPONSE)  # no reasoning: an empty block
    assert tok.decode(ids[mask == 1]) == "<think>\n\n</think>\n\n" + RESPONSE + "<|im_end|>\n"
    assert {tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")} <= set(ids[mask == 1].tolist())
