"""The config schema: every field declared once (type, allowed values, default, doc), validated once."""

from __future__ import annotations

import dataclasses

import pytest

from exploresft_jax.configs import base, schema
from exploresft_jax.losses import grpo as grpo_losses
from exploresft_jax.models import attention


def test_defaults_parse_and_every_field_has_a_doc():
    run = schema.parse(base.get_config())
    assert isinstance(run, schema.RunConfig) and run.loss.oxa.ul_weight == 1e-4 and run.grpo.dual_clip == 3.0
    docs = schema.fields_doc()
    assert len(docs) > 120 and all(doc.strip() for _, _, doc in docs)
    assert len({name for name, _, _ in docs}) == len(docs)
    # the ConfigDict defaults are the schema's, field for field
    assert schema.to_config_dict(schema.RunConfig()).to_dict() == base.get_config().to_dict()


@pytest.mark.parametrize("field,value,needle", [
    ("model.attention", "flash3", "config.model.attention='flash3': expected one of"),
    ("grpo.top_p", 1.5, "config.grpo.top_p=1.5: must be <= 1"),
    ("batch.micro_batches", 0, "config.batch.micro_batches=0: must be >= 1"),
    ("loss.curio.tau_min", 2.0, "config.loss.curio.tau_min=2.0: must be <= tau_max"),
    ("grpo.dual_clip", 0.5, "config.grpo.dual_clip=0.5: must be 0 (off) or > 1"),
    ("data.format", "csv", "config.data.format='csv': expected one of"),
    ("grpo.page_size", 24, "config.grpo.page_size=24: must be a power of two <= 64"),
    ("grpo.page_size", 128, "config.grpo.page_size=128: must be a power of two <= 64"),
])
def test_a_bad_value_is_one_line_naming_the_field(field, value, needle):
    c = base.get_config()
    section, name = field.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(ValueError) as info:
        schema.parse(c)
    assert str(info.value).startswith(needle) and "\n" not in str(info.value)


def test_unknown_and_mistyped_fields_are_refused():
    c = base.get_config()
    c.unlock()
    c.optim.lrr = 1e-3
    with pytest.raises(ValueError, match=r"config\.optim\.lrr=0\.001: unknown config field"):
        schema.parse(c)
    c = base.get_config()
    c.unlock()
    del c.seed
    c.seed = "zero"
    with pytest.raises(ValueError, match=r"config\.seed='zero': expected int"):
        schema.parse(c)


def test_a_config_written_before_a_field_existed_gets_its_default_in_one_place():
    c = base.get_config()
    c.unlock()
    del c.grpo.policy_loss
    del c.guard
    assert schema.parse(c).grpo.policy_loss == "ppo_clip"
    schema.complete(c)
    assert c.grpo.policy_loss == "ppo_clip" and c.guard.spike_window == 50


def test_registry_owned_fields_accept_a_new_registry_entry():
    c = base.get_config()
    c.grpo.policy_loss = "toy_pg"
    with pytest.raises(ValueError, match="policy_loss"):
        schema.parse(c)

    @grpo_losses.register_policy_loss("toy_pg", clip_fields=("clip_low", "clip_high"))
    def toy(logp, old, adv, m, **kw):
        return grpo_losses.ppo_clip_term(logp, old, adv, m, **kw)

    @attention.register_backend("toy_dense")
    def toy_backend(call):
        return attention.BACKENDS["dense"].fn(call)

    try:
        c.model.attention = "toy_dense"
        run = schema.parse(c)
        assert (run.grpo.policy_loss, run.model.attention) == ("toy_pg", "toy_dense")
    finally:
        del grpo_losses.POLICY_LOSSES["toy_pg"]
        del attention.BACKENDS["toy_dense"]


def test_method_options_are_the_schema_sections():
    from exploresft_jax.train.objectives import OBJECTIVES

    c = base.get_config()
    c.method, c.loss.oxa.ul_weight = "oxa", 0.25
    opts = OBJECTIVES["oxa"].options_of(c)
    assert opts == schema.OXAOptions(ul_weight=0.25) and hash(opts) == hash(schema.OXAOptions(ul_weight=0.25))
    assert {f.name for f in dataclasses.fields(schema.CurioOptions)} == set(c.loss.curio.keys())
    with pytest.raises(schema.ConfigError, match="sample_weighting='ppl'"):
        schema.OXAOptions(sample_weighting="ppl")


def test_the_page_size_bound_is_the_samplers():
    from exploresft_jax.sampling import continuous

    assert schema.MAX_PAGE_SIZE == continuous.MIN_WINDOW
