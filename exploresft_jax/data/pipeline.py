"""SFT / OXA input pipeline: tokenisation with response-only loss masks, a length filter, optional packing,
and a grain dataset of whole training steps with a checkpointable iterator.

Every element of the dataset is one optimizer step's batch for this process:
    tokens, labels, loss_mask, positions, segment_ids: [micro_batches, rows_per_micro, max_length] int32
    is_negative: [micro_batches, rows_per_micro] int32 (OXA: 1 on UL rows); weight: same shape, float32
`labels[..., t]` is the token after `tokens[..., t]` (inputs already shifted); `loss_mask` is 1 where that label
is a response token. `segment_ids` is 0 on padding and 1, 2, ... per packed example.

Order: each pool (CE, and for OXA also UL) is walked in a seeded permutation that changes every epoch of that
pool; step i takes the next `ce_per_step` CE examples (and `ul_per_step` UL examples), so every batch holds
fixed counts of both kinds. Because a step's content is a pure function of (seed, step), the iterator state is
just the step index, and resuming is exact.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from exploresft_jax.models.tokenizer import encode_prompt_response

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenizedSet:
    """Tokenised examples of one pool. ids[i]: [n_i] int32; targets[i]: [n_i] int32 (1 on response tokens)."""

    ids: list[np.ndarray]
    targets: list[np.ndarray]
    weight: np.ndarray
    dropped: int = 0
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(x) for x in self.ids))


def tokenize_records(records: Sequence[dict], tokenizer, *, max_length: int, overlong: str = "drop",
                     chat_template: bool = True, system_prompt: str = "", prompt_suffix: str = "") -> TokenizedSet:
    """Tokenises records into (ids, response targets), dropping or truncating sequences over max_length."""
    if overlong not in ("drop", "truncate"):
        raise ValueError(f"data.overlong={overlong!r}; expected 'drop' or 'truncate'")
    ids, targets, weights = [], [], []
    dropped = truncated = 0
    for rec in records:
        prompt = rec["prompt"]
        if prompt_suffix:
            prompt = prompt + prompt_suffix if isinstance(prompt, str) else (
                prompt[:-1] + [{**prompt[-1], "content": prompt[-1]["content"] + prompt_suffix}])
        x, m = encode_prompt_response(tokenizer, prompt, rec["response"], chat_template=chat_template,
                                      system=system_prompt or None)
        if len(x) > max_length:
            if overlong == "drop":
                dropped += 1
                continue
            truncated += 1
            x, m = x[:max_length], m[:max_length]
        if m[1:].sum() == 0:
            dropped += 1  # nothing to learn from (e.g. the prompt alone fills max_length)
            continue
        ids.append(x)
        targets.append(m)
        weights.append(rec.get("weight", 1.0))
    return TokenizedSet(ids, targets, np.asarray(weights, np.float32), dropped, truncated)


def pack_examples(lengths: Sequence[int], max_length: int, order: Sequence[int]) -> list[list[int]]:
    """Greedy sequential packing of examples (in `order`) into rows of at most max_length tokens."""
    rows, cur, used = [], [], 0
    for i in order:
        n = lengths[i]
        if cur and used + n > max_length:
            rows.append(cur)
            cur, used = [], 0
        cur.append(int(i))
        used += n
    if cur:
        rows.append(cur)
    return rows


def build_row(pool: TokenizedSet, members: Sequence[int], max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """One [max_length] row holding the examples `members` (one, or several when packing)."""
    row = {k: np.zeros(max_length, np.int32) for k in ("tokens", "labels", "loss_mask", "positions", "segment_ids")}
    row["tokens"][:] = pad_id
    start = 0
    for seg, i in enumerate(members, 1):
        x, m = pool.ids[i], pool.targets[i]
        n = len(x)
        sl = slice(start, start + n)
        row["tokens"][sl] = x
        row["labels"][start:start + n - 1] = x[1:]  # the last token of a segment predicts nothing
        row["loss_mask"][start:start + n - 1] = m[1:]
        row["positions"][sl] = np.arange(n)
        row["segment_ids"][sl] = seg
        start += n
    return row


class StepSource:
    """Random-access source: item i = this process's share of optimizer step i's batch (see module doc).

    pools: [(TokenizedSet, rows_per_step, is_negative)] - one pool for SFT, CE and UL pools for OXA.
    With packing (single pool only), rows are packed bins of examples, recomputed per epoch.
    """

    def __init__(self, pools, *, max_length: int, micro_batches: int, pad_id: int, seed: int, shuffle: bool = True,
                 packing: bool = False, process_index: int = 0, process_count: int = 1):
        self.pools = pools
        self.max_length, self.micro, self.pad_id, self.seed = max_length, micro_batches, pad_id, seed
        self.shuffle, self.packing = shuffle, packing
        self.process_index, self.process_count = process_index, process_count
        if packing and len(pools) != 1:
            raise ValueError("packing supports a single (CE) pool; OXA batches are not packed")
        for pool, rows, _ in pools:
            if rows <= 0 or len(pool) == 0:
                raise ValueError("every pool needs examples and a positive number of rows per step")
        total = sum(rows for _, rows, _ in pools)
        if total % (micro_batches * process_count):
            raise ValueError(f"{total} rows per step do not split into {micro_batches} micro-batches "
                             f"x {process_count} processes")
        self._epoch_cache: dict[tuple[int, int], list[list[int]]] = {}
        self._epoch_starts: dict[int, list[int]] = {}

    def _epoch_units(self, p: int, epoch: int) -> list[list[int]]:
        """The units (lists of example ids forming a row) of pool p in `epoch`, in their order for that epoch."""
        key = (p, epoch)
        if key not in self._epoch_cache:
            pool = self.pools[p][0]
            rng = np.random.default_rng([self.seed, p, epoch])
            order = rng.permutation(len(pool)) if self.shuffle else np.arange(len(pool))
            if self.packing:
                units = pack_examples([len(x) for x in pool.ids], self.max_length, order)
            else:
                units = [[int(i)] for i in order]
            if len(self._epoch_cache) > 8:
                self._epoch_cache.clear()
            self._epoch_cache[key] = units
        return self._epoch_cache[key]

    def units_per_epoch(self, p: int = 0) -> int:
        return len(self._epoch_units(p, 0))

    def steps_per_epoch(self) -> int:
        """Steps for one pass over the first (CE) pool."""
        return max(1, self.units_per_epoch(0) // self.pools[0][1])

    def _locate(self, p: int, unit: int) -> tuple[int, int]:
        """(epoch, offset) of pool p's global unit index. With packing, epochs hold different numbers of units,
        so the epoch boundaries are accumulated (and remembered) rather than computed by division."""
        if not self.packing:
            return divmod(unit, len(self.pools[p][0]))
        starts = self._epoch_starts.setdefault(p, [0])
        while starts[-1] <= unit:
            starts.append(starts[-1] + len(self._epoch_units(p, len(starts) - 1)))
        epoch = int(np.searchsorted(starts, unit, side="right")) - 1
        return epoch, unit - starts[epoch]

    def _take(self, p: int, start: int, count: int) -> list[list[int]]:
        out = []
        while count:
            epoch, off = self._locate(p, start)
            units = self._epoch_units(p, epoch)
            take = min(count, len(units) - off)
            out.extend(units[off:off + take])
            start, count = start + take, count - take
        return out

    def __len__(self) -> int:
        return 2**62  # effectively infinite: the trainer stops at its step budget

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        rows, neg, weight = [], [], []
        for p, (pool, per_step, is_negative) in enumerate(self.pools):
            for members in self._take(p, step * per_step, per_step):
                rows.append(build_row(pool, members, self.max_length, self.pad_id))
                neg.append(int(is_negative))
                weight.append(float(np.mean(pool.weight[members])))
        # Interleave the pools in proportion so every micro-batch gets the same mix, then keep this process's
        # columns of every micro-batch.
        total = len(rows)
        keys = np.concatenate([(np.arange(r) + 0.5) / r for _, r, _ in self.pools])
        order = np.argsort(keys, kind="stable")
        rows = [rows[i] for i in order]
        neg, weight = np.asarray(neg)[order], np.asarray(weight, np.float32)[order]
        per_micro = total // self.micro
        local = per_micro // self.process_count
        cols = slice(self.process_index * local, (self.process_index + 1) * local)
        batch = {k: np.stack([r[k] for r in rows]).reshape(self.micro, per_micro, -1)[:, cols]
                 for k in rows[0]}
        batch["is_negative"] = neg.reshape(self.micro, per_micro)[:, cols].astype(np.int32)
        batch["weight"] = weight.reshape(self.micro, per_micro)[:, cols]
        return batch


def make_dataset(source: StepSource, *, num_workers: int = 0):
    """A grain IterDataset over steps 0, 1, 2, ...; its iterator's get_state/set_state resume exactly."""
    import grain

    ds = grain.MapDataset.source(source).to_iter_dataset()
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
    return ds


def batch_layout(cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of one optimizer step's *global* batch for an SFT-family config, as the train step
    receives it: {name: (shape, dtype name)}. Used to compile the step ahead of time (scripts/fit.py)."""
    rows = cfg.batch.global_size + (cfg.batch.ul_size if cfg.method == "oxa" else 0)
    micro = cfg.batch.micro_batches
    per_micro, t = rows // micro, cfg.data.max_length
    out = {k: ((micro, per_micro, t), "int32") for k in ("tokens", "labels", "loss_mask", "positions",
                                                           "segment_ids")}
    out["is_negative"] = ((micro, per_micro), "int32")
    out["weight"] = ((micro, per_micro), "float32")
    return out
