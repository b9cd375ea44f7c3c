"""Every documented bad input raises a clear error naming the problem (empty inputs give empty results)."""

from __future__ import annotations

import pytest
import torch

from delta_attn import DeltaConfig, DeltaState, delta_attention, register_sparse_method
from delta_attn.sparse import MaskModMethod, SparseMethod, available_sparse_methods


def qkv(b=1, hq=4, hkv=2, n=50, d=16, dtype=torch.float32):
    return (
        torch.randn(b, hq, n, d, dtype=dtype),
        torch.randn(b, hkv, n, d, dtype=dtype),
        torch.randn(b, hkv, n, d, dtype=dtype),
    )


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"mode": "fast"}, ValueError, "mode must be one of"),
        ({"interp": "cubic"}, ValueError, "interp must be one of"),
        ({"sparse": "nope"}, ValueError, "unknown sparse method 'nope'"),
        ({"sparse": 3}, TypeError, "registered method name"),
        ({"gamma": 0}, ValueError, "gamma must be >= 1"),
        ({"gamma": 2.5}, TypeError, "gamma must be an int"),
        ({"window": 0}, ValueError, "window must be >= 1"),
        ({"sink": -1}, ValueError, "sink must be >= 0"),
        ({"tail": -3}, ValueError, "tail must be >= 0"),
        ({"ema_beta": 1.0}, ValueError, "ema_beta must lie in"),
        ({"abg_alpha": 0.0}, ValueError, "abg_alpha must lie in"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
        ({"block_size": 0}, ValueError, "block_size must be >= 1"),
        ({"dense_layers": -1}, ValueError, "dense_layers must be >= 0"),
        ({"dense_layers": [0, "x"]}, ValueError, "dense_layers entries"),
        ({"gamma": True}, TypeError, "gamma must be an int"),
    ],
)
def test_config_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DeltaConfig(**kwargs)


def test_config_lists_known_methods():
    with pytest.raises(ValueError) as info:
        DeltaConfig(sparse="streamin")
    for name in ["streaming", "vertical_slash", "topk", "block", "dense"]:
        assert name in str(info.value)
        assert name in available_sparse_methods()


def test_bad_tensors(seed):
    q, k, v = qkv()
    cases = [
        ((q[0], k, v), ValueError, "q must have 4 dims"),
        ((q, k[0], v), ValueError, "k must have 4 dims"),
        ((q.long(), k, v), TypeError, "q must be a floating-point"),
        ((q, k.int(), v), TypeError, "k must be a floating-point"),
        ((q, k.double(), v), TypeError, "share one dtype"),
        ((torch.randn(1, 3, 50, 16), k, v), ValueError, "multiple of key/value heads"),
        ((torch.randn(1, 4, 50, 8), k, v), ValueError, "head dims differ"),
        ((q, k, v[:, :, :40]), ValueError, "same shape"),
        ((torch.randn(2, 4, 50, 16), k, v), ValueError, "batch sizes differ"),
        ((torch.randn(1, 4, 60, 16), k, v), ValueError, "Nk >= Nq"),
        ((q.numpy(), k, v), TypeError, "must be a torch.Tensor"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            delta_attention(*args)


def test_bad_keywords(seed):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="config must be a DeltaConfig"):
        delta_attention(q, k, v, {"gamma": 4})
    with pytest.raises(ValueError, match="scale must be a positive"):
        delta_attention(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="prompt_len must be an int >= Nk"):
        delta_attention(q, k, v, prompt_len=10)
    with pytest.raises(TypeError, match="state must be a DeltaState"):
        delta_attention(q, k, v, state={})
    with pytest.raises(ValueError, match="one integer per batch element"):
        delta_attention(q, k, v, left_pad=[0, 1])
    with pytest.raises(ValueError, match="at least one real token"):
        delta_attention(q, k, v, left_pad=[50])
    with pytest.raises(ValueError, match="backend='triton' needs CUDA"):
        delta_attention(q, k, v, DeltaConfig(backend="triton"))


def test_mixed_devices(seed):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        delta_attention(q.to("meta"), k, v)  # the meta device stands in for a second device on CPU-only CI


def test_register_custom_method(seed):
    name = "every_third_test"
    method = MaskModMethod(lambda b, h, q, kv: ((q - kv) % 3 == 0) | (kv == 0), name)
    register_sparse_method(name, method, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_sparse_method(name, method)
    with pytest.raises(TypeError, match="plan"):
        register_sparse_method("bad", object())
    q, k, v = qkv(n=90, dtype=torch.float64)
    by_name = delta_attention(q, k, v, DeltaConfig(sparse=name, gamma=8, mode="sparse"))
    by_object = delta_attention(q, k, v, DeltaConfig(sparse=method, gamma=8, mode="sparse"))
    assert torch.equal(by_name, by_object)
    # the pattern really is used: it differs from dense
    assert not torch.allclose(by_name, delta_attention(q, k, v, DeltaConfig(mode="dense")))


@pytest.mark.parametrize(
    "mask_mod,exc,match",
    [
        (lambda b, h, q, kv: None, TypeError, "mask_mod returned None"),
        (lambda b, h, q, kv: 1.0, TypeError, "mask_mod returned float"),
        (lambda b, h, q, kv: (q - kv).float(), TypeError, "mask_mod returned a torch.float32 tensor"),
        (lambda b, h, q, kv: torch.ones(3, 5, dtype=torch.bool), ValueError, r"mask_mod returned shape \(3, 5\)"),
        (lambda b, h, q, kv: torch.ones(1, 1, 1, 1, 1, dtype=torch.bool), ValueError, "mask_mod returned shape"),
    ],
    ids=["none", "float", "float-tensor", "wrong-shape", "five-dims"],
)
@pytest.mark.parametrize("mode", ["delta", "sparse"])
def test_garbage_mask_mod_names_the_method(mask_mod, exc, match, mode, seed):
    q, k, v = qkv()
    cfg = DeltaConfig(sparse=MaskModMethod(mask_mod, "garbage"), gamma=8, mode=mode)
    with pytest.raises(exc, match=f"sparse method 'garbage': {match}.*expected a bool tensor"):
        delta_attention(q, k, v, cfg)


class ReturnsWhatItIsGiven(SparseMethod):
    name = "returns_garbage"

    def __init__(self, result):
        self.result = result

    def plan(self, q, k, config, *, q_start, scale):
        return self.result


@pytest.mark.parametrize("result", [None, 3.5, torch.ones(50, 50, dtype=torch.bool), lambda b, h, q, kv: q >= kv])
def test_garbage_plan_names_the_method(result, seed):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="sparse method 'returns_garbage': plan.. returned .*expected a delta_attn"):
        delta_attention(q, k, v, DeltaConfig(sparse=ReturnsWhatItIsGiven(result), gamma=8))


def test_row_without_visible_key_is_an_error(seed):
    q, k, v = qkv(n=40)
    only_far_keys = MaskModMethod(lambda b, h, qi, kj: qi - kj >= 3, "far_only")  # rows 0..2 see nothing
    for mode in ("delta", "recompute", "sparse"):
        with pytest.raises(ValueError, match="'far_only' leaves query row 0 .* no visible key"):
            delta_attention(q, k, v, DeltaConfig(sparse=only_far_keys, gamma=8, mode=mode))
    # the same rows in a later chunk: the error names the absolute position
    late = MaskModMethod(lambda b, h, qi, kj: (qi != 25) | (kj > 100), "row25_blind")
    with pytest.raises(ValueError, match="'row25_blind' leaves query row 25 "):
        delta_attention(q[:, :, 20:], k, v, DeltaConfig(sparse=late, gamma=4, mode="sparse"))
    # dense mode never consults the base
    out = delta_attention(q, k, v, DeltaConfig(sparse=only_far_keys, mode="dense"))
    assert torch.isfinite(out).all()


def test_vertical_slash_always_keeps_the_diagonal(seed):
    """With no forced columns or diagonals the estimated pattern still gives every row its own key,
    even when every query scores its own key lowest (k = -q)."""
    q, _, v = qkv(hq=1, hkv=1, n=64, dtype=torch.float64)
    k = -3 * q
    cfg = DeltaConfig(sparse="vertical_slash", vertical_size=1, slash_size=1, vs_first_columns=0, vs_last_diagonals=0)
    out = delta_attention(q, k, v, cfg.replace(mode="sparse"))
    assert torch.isfinite(out).all() and out.abs().sum(-1).gt(0).all()


@pytest.mark.parametrize("mode", ["delta", "sparse", "dense"])
def test_empty_batch_returns_an_empty_result(mode, seed):
    q, k, v = qkv(b=0, n=30)
    cfg = DeltaConfig(gamma=8, window=4, mode=mode)
    out = delta_attention(q, k, v, cfg)
    assert out.shape == (0, 4, 30, 16) and out.dtype == q.dtype
    assert delta_attention(q[:, :, 10:], k, v, cfg, prompt_len=40, state=DeltaState(), left_pad=[]).shape == (
        0,
        4,
        20,
        16,
    )
