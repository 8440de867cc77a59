"""Text-level generation: prompts (strings or chat messages) in, decoded completions out.

Stop strings are applied after decoding: a row's text is cut before the earliest stop string, and its token
count and summed log-prob cover the shortest token prefix whose text contains that string. (Stop *ids* end a
row inside the decode loop; a stop string does not stop decoding early.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from exploresft_jax.models.tokenizer import chat_prompt, stop_token_ids
from exploresft_jax.sampling.sampler import FINISH_STOP, Sampler
from exploresft_jax.sampling.strategies import SamplingConfig


@dataclasses.dataclass(frozen=True)
class Completion:
    """One decoded sample: text, generated tokens counted (stop token included), summed log-prob (nats)."""

    text: str
    num_tokens: int
    logprob: float
    finish_reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def encode_prompts(tokenizer, prompts: Sequence[str | Sequence[dict]], *, chat_template: bool = True,
                   system: str | None = None) -> list[list[int]]:
    """Token ids of each prompt: chat-templated (ending with the assistant header) or the raw string."""
    out = []
    for i, prompt in enumerate(prompts):
        if chat_template:
            text = chat_prompt(tokenizer, prompt, system)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i}: without a chat template the prompt must be a string")
            ids = tokenizer(prompt)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {i} encodes to no tokens")
        out.append(list(ids))
    return out


def decode_rows(tokenizer, out) -> list[str]:
    """The text of every row of a `SampleOutput` (its generated tokens up to its length, special tokens dropped)."""
    return [tokenizer.decode(out.tokens[r, :out.lengths[r]], skip_special_tokens=True)
            for r in range(len(out.lengths))]


def _cut_at_stop_string(tokenizer, ids: np.ndarray, text: str, stop_strings: Sequence[str]):
    """(text before the earliest stop string, tokens needed to produce it) or None when none occurs."""
    hits = [(text.find(s), s) for s in stop_strings if s and s in text]
    if not hits:
        return None
    at, s = min(hits)
    # Smallest k whose decoded prefix contains the stop string (containment grows with k): binary search.
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if s in tokenizer.decode(ids[:mid], skip_special_tokens=True):
            hi = mid
        else:
            lo = mid + 1
    return text[:at], lo


def generate_text(sampler: Sampler, tokenizer, prompts: Sequence[str | Sequence[dict]], *, n: int = 1,
                  max_new_tokens: int = 1024, config: SamplingConfig = SamplingConfig(),
                  chat_template: bool = True, system: str | None = None, stop_ids: Sequence[int] | None = None,
                  stop_strings: Sequence[str] = (), key=0,
                  progress: Callable[[int], None] | None = None) -> list[list[Completion]]:
    """Samples n completions per prompt and decodes them.

    stop_ids: default `tokenizer.stop_token_ids` (Qwen chat: <|im_end|>, <|endoftext|>). The text excludes
    special tokens and stop strings. Returns one list of n `Completion`s per prompt, in prompt order.
    """
    ids = encode_prompts(tokenizer, prompts, chat_template=chat_template, system=system)
    stops = stop_token_ids(tokenizer) if stop_ids is None else list(stop_ids)
    out = sampler.generate(ids, n=n, max_new_tokens=max_new_tokens, config=config, stop_ids=stops, key=key,
                           progress=progress)
    results: list[list[Completion]] = [[] for _ in prompts]
    for r in range(out.tokens.shape[0]):
        length = int(out.lengths[r])
        row = out.tokens[r, :length]
        text = tokenizer.decode(row, skip_special_tokens=True)
        reason = str(out.finish_reason[r])
        cut = _cut_at_stop_string(tokenizer, row, text, stop_strings) if stop_strings else None
        if cut is not None:
            text, length = cut
            reason = FINISH_STOP
        results[int(out.prompt_index[r])].append(
            Completion(text=text, num_tokens=length, logprob=float(out.logprobs[r, :length].sum()),
                       finish_reason=reason))
    return results
