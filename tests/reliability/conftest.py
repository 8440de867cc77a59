from __future__ import annotations

import pytest

from tests.reliability.common import make_warmup


@pytest.fixture(scope="session")
def grpo_warmup(tmp_path_factory):
    """The tiny GRPO config's SFT warm-up, trained once for every GRPO reliability test."""
    return make_warmup(tmp_path_factory.mktemp("warmup"))
