"""SFT / OXA input pipeline: tokenisation with response-only loss masks, a length filter, packing, and a grain
dataset of whole training steps with a checkpointable iterator.

Every element of the dataset is one optimizer step's batch for this process; every array is
[micro, rows_per_micro, max_length]:
    tokens, labels, loss_mask, positions, segment_ids: int32
    is_negative: int32, 1 on the tokens of UL (OXA negative) examples
    weight: float32, the record's "weight" on its example's tokens
    sample_norm: float32, 1 / (response tokens of the example) on that example's counted tokens
`labels[..., t]` is the token after `tokens[..., t]` (inputs already shifted); `loss_mask` is 1 where that label
is a response token. `segment_ids` is 0 on padding and 1, 2, ... per packed example of a row; `positions`
restart at 0 in every segment. A per-example token mean summed over examples is
`sum(value * loss_mask * sample_norm)`, whatever the packing. The leading (micro-batch) axis of
`packing="examples"` steps takes one of `StepSource.micro_buckets`; micro-batches past the step's rows are
all padding (the train step skips them).

Packing (`data.packing`):
  * "none": one example per row; a step holds `ce_per_step` CE (+ `ul_per_step` UL) rows.
  * "examples": the same examples per step as "none", first-fit-decreasing into as few rows as they need
    (CE and UL examples packed separately, so a row never mixes them); the rows fill the first
    ceil(rows / rows_per_micro) micro-batches.
  * "tokens": a fixed number of rows per step (`ce_per_step` / `ul_per_step` are row counts), filled by
    first-fit-decreasing over windows of each epoch's shuffled order; the example count per step varies.
No example is ever split over two segments or truncated to fit a row (tokenize_records already dropped or
truncated, and counted, the examples over max_length).

Order: each pool (CE, and for OXA also UL) is walked in a seeded permutation that changes every epoch of that
pool; step i takes the next units (examples, or packed rows for "tokens") of every pool. Because a step's
content is a pure function of (seed, step), the iterator state is just the step index, and resuming is exact.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
from collections.abc import Sequence

import numpy as np

from exploresft_jax.configs.schema import PACKING_MODES  # noqa: F401  (declared with the config field)
from exploresft_jax.models.tokenizer import encode_prompt_response, with_suffix
from exploresft_jax.train.objectives import rows_per_step

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
                     chat_template: bool = True, system_prompt: str = "", prompt_suffix: str = "",
                     max_prompt_length: int = 0, max_response_length: int = 0) -> TokenizedSet:
    """Tokenises records into (ids, response targets), dropping or truncating sequences over max_length.

    max_prompt_length > 0 drops examples whose prompt (everything before the first trained token) is longer;
    max_response_length > 0 cuts responses to that many tokens (the CurioSFT release: prompts over 1,024
    tokens filtered, responses truncated at 8,192, losing their end-of-turn token). Both count in
    `dropped` / `truncated`, before the max_length rule applies.
    """
    if overlong not in ("drop", "truncate"):
        raise ValueError(f"data.overlong={overlong!r}; expected 'drop' or 'truncate'")
    ids, targets, weights = [], [], []
    dropped = truncated = 0
    for rec in records:
        prompt = with_suffix(rec["prompt"], prompt_suffix)
        x, m = encode_prompt_response(tokenizer, prompt, rec["response"], chat_template=chat_template,
                                      system=system_prompt or None)
        n_prompt = int(np.argmax(m > 0)) if m.any() else len(m)
        if max_prompt_length > 0 and n_prompt > max_prompt_length:
            dropped += 1
            continue
        if max_response_length > 0 and len(x) - n_prompt > max_response_length:
            truncated += 1
            x, m = x[:n_prompt + max_response_length], m[:n_prompt + max_response_length]
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


ROW_KEYS = ("tokens", "labels", "loss_mask", "positions", "segment_ids", "is_negative", "weight", "sample_norm")
FLOAT_KEYS = ("weight", "sample_norm")
# "tokens" packing runs first-fit-decreasing over windows of this many examples of an epoch's order: windows
# large enough to pack tightly, small enough that one epoch packs in well under a second.
TOKEN_PACK_WINDOW = 2048


def packing_mode(value) -> str:
    """data.packing as one of PACKING_MODES; the old booleans map False -> "none", True -> "tokens"."""
    if value is False or value is None:
        return "none"
    if value is True:
        return "tokens"
    if value in PACKING_MODES:
        return value
    raise ValueError(f"data.packing={value!r}; expected one of {PACKING_MODES}")


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of at most `capacity` tokens: items (positions into `lengths`) longest first, each into the first
    bin with room (ties keep the given order). Every item is placed exactly once; raises if one is longer
    than `capacity`."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"an example of {int(lengths.max())} tokens does not fit a row of {capacity}")
    free = np.empty(len(lengths), np.int64)
    bins: list[list[int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = lengths[i]
        fits = free[:len(bins)] >= n
        j = int(fits.argmax()) if len(bins) and fits.any() else len(bins)
        if j == len(bins):
            bins.append([])
            free[j] = capacity
        bins[j].append(int(i))
        free[j] -= n
    return bins


def build_row(pool: TokenizedSet, members: Sequence[int], max_length: int, pad_id: int,
              is_negative: bool = False) -> dict[str, np.ndarray]:
    """One [max_length] row (arrays named in ROW_KEYS) holding the examples `members` as segments 1, 2, ..."""
    row = {k: np.zeros(max_length, np.float32 if k in FLOAT_KEYS else np.int32) for k in ROW_KEYS}
    row["tokens"][:] = pad_id
    start = 0
    for seg, i in enumerate(members, 1):
        x, m = pool.ids[i], pool.targets[i]
        n = len(x)
        if start + n > max_length:
            raise ValueError(f"examples of {start + n} tokens do not fit a row of {max_length}")
        sl = slice(start, start + n)
        row["tokens"][sl] = x
        row["labels"][start:start + n - 1] = x[1:]  # the last token of a segment predicts nothing
        row["loss_mask"][start:start + n - 1] = m[1:]
        row["positions"][sl] = np.arange(n)
        row["segment_ids"][sl] = seg
        row["is_negative"][sl] = int(is_negative)
        row["weight"][sl] = pool.weight[i]
        counted = int(np.sum(m[1:]))
        row["sample_norm"][start:start + n - 1] = m[1:] / max(counted, 1)
        start += n
    return row


class StepSource:
    """Random-access source: item i = this process's share of optimizer step i's batch (see module doc).

    pools: [(TokenizedSet, per_step, is_negative)] - one pool for SFT, CE and UL pools for OXA; per_step is the
    number of examples per step ("none", "examples") or of rows per step ("tokens").
    micro_batches: micro-batches per step ("none", "tokens"); the first (smallest) bucket for "examples".
    rows_per_micro: rows of one micro-batch (0: all rows of a "none" step / micro_batches).
    """

    def __init__(self, pools, *, max_length: int, micro_batches: int, pad_id: int, seed: int, shuffle: bool = True,
                 packing="none", rows_per_micro: int = 0, process_index: int = 0, process_count: int = 1):
        self.pools = pools
        self.max_length, self.micro, self.pad_id, self.seed = max_length, micro_batches, pad_id, seed
        self.shuffle, self.mode = shuffle, packing_mode(packing)
        self.process_index, self.process_count = process_index, process_count
        for pool, rows, _ in pools:
            if rows <= 0 or len(pool) == 0:
                raise ValueError("every pool needs examples and a positive number of rows per step")
            longest = max(len(x) for x in pool.ids)
            if longest > max_length:
                raise ValueError(f"an example of {longest} tokens is longer than max_length={max_length}")
        total = sum(rows for _, rows, _ in pools)
        if rows_per_micro <= 0:
            if total % micro_batches:
                raise ValueError(f"{total} rows per step do not split into {micro_batches} micro-batches")
            rows_per_micro = total // micro_batches
        elif self.mode != "examples" and rows_per_micro * micro_batches != total:
            raise ValueError(f"rows_per_micro={rows_per_micro} x {micro_batches} micro-batches != the {total} rows "
                             f"of a step (packing={self.mode!r})")
        if rows_per_micro % process_count:
            raise ValueError(f"{rows_per_micro} rows per micro-batch do not split over {process_count} processes")
        self.rows_per_micro = rows_per_micro
        # "examples": the micro axis is bucketed, micro_batches * 2^k, up to the count that always suffices
        # (one example per row), so a run compiles at most len(micro_buckets) step shapes.
        most = max(micro_batches, -(-total // rows_per_micro))
        buckets = [micro_batches]
        while self.mode == "examples" and buckets[-1] < most:
            buckets.append(min(buckets[-1] * 2, most))
        self.micro_buckets = tuple(buckets)
        self._epoch_cache: dict[tuple[int, int], list[list[int]]] = {}
        self._epoch_starts: dict[int, list[int]] = {}
        # grain's read threads call __getitem__ concurrently: the epoch cache and the epoch boundaries are shared,
        # and appending to the boundaries from two threads at once left them out of order (wrong epochs, and a
        # list that grew without end while the threads spun on it)
        self._lock = threading.RLock()

    def _epoch_units(self, p: int, epoch: int) -> list[list[int]]:
        """The units (lists of example ids: one example, or a packed row for "tokens") of pool p in `epoch`."""
        key = (p, epoch)
        with self._lock:
            if key in self._epoch_cache:
                return self._epoch_cache[key]
            pool = self.pools[p][0]
            rng = np.random.default_rng([self.seed, p, epoch])
            order = rng.permutation(len(pool)) if self.shuffle else np.arange(len(pool))
            if self.mode == "tokens":
                lengths = np.asarray([len(x) for x in pool.ids])
                units = []
                for w in range(0, len(order), TOKEN_PACK_WINDOW):
                    ids = order[w:w + TOKEN_PACK_WINDOW]
                    bins = [[int(ids[j]) for j in b] for b in first_fit_decreasing(lengths[ids], self.max_length)]
                    # FFD emits long-example bins first: shuffle so that steps are not sorted by length
                    units.extend(bins[j] for j in (rng.permutation(len(bins)) if self.shuffle else range(len(bins))))
            else:
                units = [[int(i)] for i in order]
            if len(self._epoch_cache) > 8:
                self._epoch_cache.clear()
            self._epoch_cache[key] = units
            return units

    def units_per_epoch(self, p: int = 0) -> int:
        return len(self._epoch_units(p, 0))

    def steps_per_epoch(self) -> int:
        """Steps for one pass over the first (CE) pool."""
        return max(1, self.units_per_epoch(0) // self.pools[0][1])

    def _locate(self, p: int, unit: int) -> tuple[int, int]:
        """(epoch, offset) of pool p's global unit index. With "tokens" packing, epochs hold different numbers of
        units, so the epoch boundaries are accumulated (and remembered) rather than computed by division."""
        if self.mode != "tokens":
            return divmod(unit, len(self.pools[p][0]))
        with self._lock:
            starts = self._epoch_starts.setdefault(p, [0])
            while starts[-1] <= unit:
                starts.append(starts[-1] + len(self._epoch_units(p, len(starts) - 1)))
            epoch = bisect.bisect_right(starts, unit) - 1
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

    def plan(self, step: int) -> list[list[tuple[int, list[int]] | None]]:
        """The global layout of step `step`: [micro][row] -> (pool index, example ids of the row) or None (an
        all-padding row). Depends only on lengths and (seed, step); every process computes the same plan."""
        rows, keys = [], []
        for p, (pool, per_step, _) in enumerate(self.pools):
            units = self._take(p, step * per_step, per_step)
            if self.mode == "examples":
                ids = [i for u in units for i in u]
                units = [[ids[j] for j in b] for b in first_fit_decreasing([len(pool.ids[i]) for i in ids],
                                                                           self.max_length)]
            rows.extend((p, u) for u in units)
            # interleave the pools in proportion, so micro-batches hold the same mix
            keys.extend((np.arange(len(units)) + 0.5) / len(units))
        rows = [rows[i] for i in np.argsort(np.asarray(keys), kind="stable")]
        per = self.rows_per_micro
        need = -(-len(rows) // per)
        micro = next(b for b in self.micro_buckets if b >= need)
        rows += [None] * (micro * per - len(rows))
        return [rows[k * per:(k + 1) * per] for k in range(micro)]

    def __len__(self) -> int:
        return 2**62  # effectively infinite: the trainer stops at its step budget

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        plan = self.plan(step)
        local = self.rows_per_micro // self.process_count
        cols = slice(self.process_index * local, (self.process_index + 1) * local)
        batch = {k: np.zeros((len(plan), local, self.max_length), np.float32 if k in FLOAT_KEYS else np.int32)
                 for k in ROW_KEYS}
        batch["tokens"][:] = self.pad_id
        for k, micro in enumerate(plan):
            for r, entry in enumerate(micro[cols]):
                if entry is None:
                    continue
                p, members = entry
                pool, _, is_negative = self.pools[p]
                for name, v in build_row(pool, members, self.max_length, self.pad_id, is_negative).items():
                    batch[name][k, r] = v
        return batch


# Steps built ahead of the trainer, and the threads building them. grain's defaults (16 threads, 500 items) are
# sized for small records; an item here is a whole step's batch (64 rows x 16,384 tokens x 6 arrays is 25 MB), and
# a step's batch takes milliseconds to build next to the step it feeds.
READ_AHEAD_STEPS = 4
READ_THREADS = 2


def make_dataset(source: StepSource, *, num_workers: int = 0):
    """A grain IterDataset over steps 0, 1, 2, ...; its iterator's get_state/set_state resume exactly."""
    import grain

    ds = grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_AHEAD_STEPS))
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
    return ds


def rows_per_micro(cfg) -> int:
    """Rows of one micro-batch: batch.rows_per_micro, or a "none" step's rows / batch.micro_batches."""
    given = cfg.batch.rows_per_micro
    return given if given > 0 else rows_per_step(cfg) // cfg.batch.micro_batches


def batch_layout(cfg) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of one optimizer step's *global* batch for an SFT-family config, as the train step
    receives it: {name: (shape, dtype name)}, every shape [micro, rows_per_micro, max_length]. With
    data.packing="examples" the micro axis is that of the first (smallest) bucket, batch.micro_batches; steps
    that need more rows get the larger buckets of `StepSource.micro_buckets`. Used to compile the step ahead
    of time (scripts/fit.py)."""
    shape = (cfg.batch.micro_batches, rows_per_micro(cfg), cfg.data.max_length)
    return {k: (shape, "float32" if k in FLOAT_KEYS else "int32") for k in ROW_KEYS}
