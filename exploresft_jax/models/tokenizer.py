"""Tokenizer loading, chat templating and prompt/response token masks.

Tokenizers are HuggingFace `tokenizers`-backed (`transformers.AutoTokenizer`), loaded from a local folder.
`train_bpe_tokenizer` builds a small byte-level BPE tokenizer with the Qwen chat template offline (tests, demos).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# The Qwen2.5 ChatML template without a default system prompt (the OXA release trains with `qwen_no_sys`).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Llama 3's special tokens (base: <|end_of_text|> ends a document; instruct: <|eot_id|> ends a turn, <|eom_id|> a
# tool-calling message) and a chat template in its header format (what the released templates render for plain
# system / user / assistant turns, without their tool and date preamble).
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>", "<|eom_id|>")
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Tokens that end a turn or a document in the supported families: the sampler stops at any of them
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def load_tokenizer(path: str | Path):
    """AutoTokenizer from a local folder (never downloads)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types; keep one clear line
        raise ValueError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {e})") from None


# The system turn of a rendered prompt: "default" (or None / ""): whatever the checkpoint's template does when no
# system message is given (Qwen2.5-Math's inserts "Please reason step by step, ..."); "none": no system turn at
# all (the OXA release's `qwen_no_sys`); any other text: that system message.
SYSTEM_DEFAULT, SYSTEM_NONE = "default", "none"


def _system_text(system: str | None) -> str | None:
    """The system message to prepend, or None (for both "default" and "none")."""
    return None if system in (None, "", SYSTEM_DEFAULT, SYSTEM_NONE) else system


def _render(tokenizer, msgs: list[dict], system: str | None, **kw) -> str:
    """apply_chat_template, with the checkpoint's default system turn suppressed when system == "none"."""
    if system == SYSTEM_NONE and not (msgs and msgs[0]["role"] == "system"):
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
        if "<|im_start|>" not in template:
            raise ValueError("system_prompt='none' needs a ChatML (<|im_start|>) chat template; this tokenizer's "
                             "template is not one (use 'default' or give a system text)")
        kw["chat_template"] = QWEN_CHAT_TEMPLATE  # ChatML, no system turn unless the messages carry one
    return tokenizer.apply_chat_template(msgs, tokenize=False, **kw)


def as_messages(prompt: str | Sequence[dict], system: str | None = None) -> list[dict]:
    """A prompt string or a list of chat messages -> a list of {'role', 'content'} messages; a system text (not
    "default" / "none", see SYSTEM_DEFAULT) is prepended unless the messages open with one."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
        for i, m in enumerate(msgs):
            if "role" not in m or "content" not in m:
                raise ValueError(f"message {i} needs 'role' and 'content' fields, got {sorted(m)}")
    text = _system_text(system)
    if text is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": text}] + msgs
    return msgs


def with_suffix(prompt: str | Sequence[dict], suffix: str) -> str | list[dict]:
    """The prompt with `suffix` appended to its text (to the last message of a message list); a prompt that already
    ends with the suffix (data written with it, as the OXA release's is) is left as it is."""
    if not suffix:
        return prompt
    if isinstance(prompt, str):
        return prompt if prompt.rstrip().endswith(suffix.strip()) else prompt + suffix
    msgs = [dict(m) for m in prompt]
    if msgs and not str(msgs[-1].get("content", "")).rstrip().endswith(suffix.strip()):
        msgs[-1]["content"] = msgs[-1]["content"] + suffix
    return msgs


def chat_prompt(tokenizer, prompt: str | Sequence[dict], system: str | None = None) -> str:
    """The templated prompt text ending with the assistant header (generation prompt). system: see
    SYSTEM_DEFAULT."""
    return _render(tokenizer, as_messages(prompt, system), system, add_generation_prompt=True)


def encode_prompt_response(tokenizer, prompt: str | Sequence[dict] | None, response: str, *,
                           chat_template: bool = True, system: str | None = None,
                           add_special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of prompt + response and a response mask.

    With the chat template, the response is the assistant turn as the template renders it (for Qwen:
    response + '<|im_end|>\\n', so the end-of-turn token is trained). Without it, the prompt text (if any) is
    followed directly by the response text. Returns (ids [T] int32, response_mask [T] int32), with
    response_mask = 1 exactly on tokens that belong to the response.
    """
    if chat_template:
        msgs = as_messages(prompt if prompt is not None else [], system)
        prompt_text = _render(tokenizer, msgs, system, add_generation_prompt=True)
        full_text = _render(tokenizer, msgs + [{"role": "assistant", "content": response}], system)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template does not render the prompt as a prefix of prompt + response")
        response_text = full_text[len(prompt_text):]
    else:
        prompt_text = prompt if isinstance(prompt, str) else ""
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError("without a chat template the prompt must be a string")
        response_text = response
    p_ids = tokenizer(prompt_text, add_special_tokens=add_special_tokens)["input_ids"] if prompt_text else []
    r_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    ids = np.asarray(list(p_ids) + list(r_ids), np.int32)
    mask = np.concatenate([np.zeros(len(p_ids), np.int32), np.ones(len(r_ids), np.int32)])
    return ids, mask


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a chat turn or a document: those of END_OF_TURN_TOKENS the tokenizer has (Qwen's
    `<|im_end|>` / `<|endoftext|>`, Llama 3's `<|eot_id|>` / `<|eom_id|>` / `<|end_of_text|>`) and its eos."""
    ids = []
    for tok in (*END_OF_TURN_TOKENS, getattr(tokenizer, "eos_token", None)):
        if tok is None:
            continue
        i = tokenizer.convert_tokens_to_ids(tok)
        if i is not None and i != getattr(tokenizer, "unk_token_id", None) and i not in ids:
            ids.append(int(i))
    return ids


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 512, chat_template: str = QWEN_CHAT_TEMPLATE,
                        split_digits: bool = False, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                        eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>", bos_token: str | None = None):
    """A byte-level BPE tokenizer trained offline on `corpus`, with Qwen's special tokens and chat template by
    default (a Llama 3 one: LLAMA3_SPECIAL_TOKENS, LLAMA3_CHAT_TEMPLATE, eos `<|eot_id|>`, bos
    `<|begin_of_text|>`).

    split_digits=True keeps every digit a token of its own (as Qwen's tokenizer does), which makes arithmetic
    learnable digit by digit. Returns a `transformers.PreTrainedTokenizerFast` (eos `<|im_end|>`, pad
    `<|endoftext|>` by default).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token,
                                   bos_token=bos_token, chat_template=chat_template)
