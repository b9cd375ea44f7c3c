"""Every documented bad input raises a clear error naming the problem."""

from __future__ import annotations

import pytest
import torch

from delta_attn import DeltaConfig, delta_attention, register_sparse_method
from delta_attn.sparse import MaskModMethod, available_sparse_methods


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


def test_bad_tensors():
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


def test_bad_keywords():
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


def test_mixed_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        delta_attention(q.to("meta"), k, v)  # the meta device stands in for a second device on CPU-only CI


def test_register_custom_method():
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
