"""The method spec syntax of ``delta-attn eval --methods``."""

from __future__ import annotations

import pytest

from delta_attn.eval.runner import parse_batch_sizes
from delta_attn.methods import parse_method, parse_methods

DEFAULTS = {"sparse": "streaming", "window": 256, "sink": 64, "gamma": 64, "block_size": 512}


def test_modes_and_options():
    assert parse_method("dense", DEFAULTS).config is None
    s = parse_method("sparse", DEFAULTS).config
    assert (s.mode, s.sparse, s.window, s.sink) == ("sparse", "streaming", 256, 64)
    d = parse_method("delta_g16", DEFAULTS).config
    assert (d.mode, d.gamma, d.interp) == ("delta", 16, "repeat")
    r = parse_method("recompute", DEFAULTS).config
    assert (r.mode, r.gamma) == ("recompute", 64)
    e = parse_method("delta_ema0.9_g32", DEFAULTS).config
    assert (e.interp, e.ema_beta, e.gamma) == ("ema", 0.9, 32)
    a = parse_method("delta_abg0.2", DEFAULTS).config
    assert (a.interp, a.abg_alpha) == ("abg", 0.2)
    lin = parse_method("delta_linear", DEFAULTS)
    assert not lin.causal and "non-causal" in lin.describe()


def test_bases():
    b = parse_method("block", DEFAULTS).config
    assert (b.sparse, b.mode, b.block_size) == ("block", "sparse", 512)
    bd = parse_method("block_b1024+delta_g16", DEFAULTS).config
    assert (bd.sparse, bd.mode, bd.block_size, bd.gamma) == ("block", "delta", 1024, 16)
    vs = parse_method("vs+delta", DEFAULTS).config
    assert (vs.sparse, vs.mode) == ("vertical_slash", "delta")
    vs2 = parse_method("vertical_slash_v100_d200+recompute", DEFAULTS).config
    assert (vs2.sparse, vs2.vertical_size, vs2.slash_size, vs2.mode) == ("vertical_slash", 100, 200, "recompute")
    st = parse_method("streaming_w512_s128+sparse", DEFAULTS).config
    assert (st.window, st.sink) == (512, 128)
    assert parse_method("block+dense", DEFAULTS).config is None


def test_errors_and_lists():
    for bad in ("delta_q5", "nonsense", "foo+delta", "block+fast", ""):
        with pytest.raises(ValueError):
            parse_method(bad, DEFAULTS)
    ms = parse_methods("dense, sparse,delta,delta", DEFAULTS)
    assert [m.name for m in ms] == ["dense", "sparse", "delta"]


def test_batch_size_spec():
    f = parse_batch_sizes("1024:256,4096:160,8192:96")
    assert [f(L) for L in (512, 1024, 2048, 4096, 8192, 16384)] == [256, 256, 160, 160, 96, 96]
    assert parse_batch_sizes("7")(8192) == 7


def test_deadline():
    import time

    from delta_attn.eval.runner import Deadline

    now = time.perf_counter()
    assert Deadline(None).allows(1e9)
    assert Deadline(100, start=now - 50, margin_s=5).allows(40)
    assert not Deadline(100, start=now - 50, margin_s=5).allows(46)
    assert not Deadline(0).allows(0.0)


def test_delta_variant_specs():
    d = parse_method("delta", DEFAULTS)
    assert (d.config.delta_scale, d.config.extra_anchors) == (1.0, 0.0)
    assert parse_method("delta_l0.5", DEFAULTS).config.delta_scale == 0.5
    assert parse_method("delta_l.25", DEFAULTS).config.delta_scale == 0.25
    assert parse_method("delta_auto", DEFAULTS).config.delta_scale == "auto"
    assert parse_method("delta_autog", DEFAULTS).config.delta_scale == "auto-global"
    assert parse_method("delta_x25", DEFAULTS).config.extra_anchors == 0.25
    c = parse_method("delta_g16_auto_x10", DEFAULTS).config
    assert (c.gamma, c.delta_scale, c.extra_anchors) == (16, "auto", 0.1)
    assert parse_method("vs+delta_l0.5", DEFAULTS).config.sparse == "vertical_slash"
    # causality comes from DeltaConfig: auto is causal, auto-global and extra anchors are not
    assert parse_method("delta_auto", DEFAULTS).causal and parse_method("delta_l0.5", DEFAULTS).causal
    for spec, why in (("delta_autog", "auto-global"), ("delta_x25", "extra_anchors=0.25")):
        m = parse_method(spec, DEFAULTS)
        assert not m.causal and "non-causal" in m.describe() and why in m.describe()
    assert "non-causal" not in parse_method("delta_auto", DEFAULTS).describe()
    assert "λ=0.5" in parse_method("delta_l0.5", DEFAULTS).describe()
    for bad in ("delta_l1.5", "delta_x200", "delta_autox", "delta_l"):
        with pytest.raises(ValueError):
            parse_method(bad, DEFAULTS)
    with pytest.raises(ValueError, match="'global' is spelled 'autog'"):
        parse_method("delta_global", DEFAULTS)


def test_every_delta_scale_word_names_a_config_form():
    from delta_attn.config import DELTA_SCALE_MODES
    from delta_attn.methods import DELTA_SCALE_WORDS

    assert set(DELTA_SCALE_WORDS.values()) == set(DELTA_SCALE_MODES)
    for word, form in DELTA_SCALE_WORDS.items():
        assert parse_method(f"delta_{word}", DEFAULTS).config.delta_scale == form


def test_variant_fields_in_canonical_configs():
    plain = parse_method("delta", DEFAULTS).canonical()
    # the paper's values are left out, so records written before the fields existed still match
    assert "delta_scale" not in plain and "extra_anchors" not in plain
    assert parse_method("delta_l1", DEFAULTS).canonical() == plain
    assert parse_method("delta_l0.5", DEFAULTS).canonical() == {**plain, "delta_scale": 0.5}
    assert parse_method("delta_autog", DEFAULTS).canonical() == {**plain, "delta_scale": "auto-global"}
    assert parse_method("delta_x25", DEFAULTS).canonical() == {**plain, "extra_anchors": 0.25}
    # they only change mode="delta": on other modes the canonical config ignores them
    assert parse_method("recompute_l0.5", DEFAULTS).canonical() == parse_method("recompute", DEFAULTS).canonical()
    # a run header's full field dict (with or without the new fields) maps to the same canonical config
    from delta_attn.methods import canonical_from_dict

    fields = parse_method("delta", DEFAULTS).config_dict()
    old = {k: v for k, v in fields.items() if k not in ("delta_scale", "extra_anchors")}
    assert canonical_from_dict(old) == canonical_from_dict(fields) == plain
    assert canonical_from_dict(parse_method("delta_auto", DEFAULTS).config_dict())["delta_scale"] == "auto"
