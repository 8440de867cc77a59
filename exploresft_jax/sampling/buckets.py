"""Shape buckets of the sampler's compiled programs: rows, prompt lengths and pools rounded up to a power of two,
so that a handful of shapes (one compile each) serve every batch."""

from __future__ import annotations

import math


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))
