"""CPU parts of ``delta-attn bench layer``: length parsing, reports, CLI wiring (its FLOP counts: test_cost.py)."""

from __future__ import annotations

import argparse
import json

import pytest

from delta_attn.bench.layer import fmt_length, markdown, parse_length, plot, summary


def test_lengths():
    assert parse_length("128K") == 131072 and parse_length("1M") == 1 << 20 and parse_length("1000") == 1000
    assert fmt_length(1 << 20) == "1M" and fmt_length(96 * 1024) == "96K" and fmt_length(1000) == "1000"


def _fake_results():
    meth = lambda ms, sp: dict(
        ms=ms,
        tflops=100.0,
        floor_frac=0.5,
        peak_mem_gb=1.0,
        speedup_vs_cudnn=sp,  # noqa
        once=False,
        note="",
    )
    return {
        "meta": dict(
            device="GPU",
            sms=132,
            torch="t",
            triton="3",
            date="d",
            matmul_tflops=780,
            command="c",
            shape=dict(heads=32, kv_heads=8, head_dim=128, dtype="bf16"),
        ),
        "results": [
            dict(
                n=1 << 17,
                label="128K",
                methods=dict(
                    cudnn=meth(250.0, 1.0),
                    delta=dict(meth(16.0, 15.6), ms_back_to_back=14.5, speedup_vs_cudnn_back_to_back=17.2),
                    sparse=meth(11.0, 22.7),
                ),
                rows_vs_cudnn_tflops=0.9,
                delta_extra_ms=5.0,
                delta_extra_vs_dense_over_gamma=1.28,
            ),
            dict(n=1 << 20, label="1M", methods=dict(cudnn=dict(error="OOM"))),
        ],
    }


def test_reports(tmp_path):
    res = _fake_results()
    md = markdown(res)
    assert "| 128K | delta | 16.00 |" in md and "OOM" in md and "1.28" in md
    assert "| 14.50, 17.2 |" in md  # back to back beside the synchronised time, with its own ratio
    assert "| 128K | sparse | 11.00 | 100 | 22.7 |  |" in md  # none measured: an empty cell
    assert "15.6" in summary(res) and "17.2" in summary(res)
    assert "Triton kernel" not in md  # no cell records a compilation
    res["results"][0]["methods"]["delta"]["triton_compiled"] = {"_sparse_kernel": 1, "_dense_rows_kernel": 1}
    (row,) = [line for line in markdown(res).splitlines() if "Triton kernel" in line]
    assert (
        row.startswith("| 128K | delta |") and "compiled 2 Triton kernel(s): _dense_rows_kernel, _sparse_kernel" in row
    )
    plot(res, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
    json.dumps(res)


def test_cli_wiring():
    from delta_attn.cli import build_parser

    args = build_parser().parse_args(["bench", "layer", "--lengths", "32K", "--methods", "delta"])
    assert args.lengths == "32K" and callable(args.func)


def test_variant_method_names():
    from delta_attn import DeltaConfig
    from delta_attn.bench.layer import method_config, run

    base = DeltaConfig(window=128, gamma=64)
    assert method_config("cudnn", base) is None and method_config("sparse", base).mode == "sparse"
    assert method_config("delta_l0.5", base) == base.replace(delta_scale=0.5)
    assert method_config("delta_auto", base) == base.replace(delta_scale="auto")
    assert method_config("delta_autog", base) == base.replace(delta_scale="auto-global")
    with pytest.raises(ValueError, match="spelled 'autog'"):  # one spelling per variant (eval's)
        method_config("delta_global", base)
    assert method_config("delta_auto_x25", base) == base.replace(delta_scale="auto", extra_anchors=0.25)
    for bad in ("delta_l2", "delta_x", "delta_fast", "dense"):
        with pytest.raises(ValueError):
            method_config(bad, base)
    args = argparse.Namespace(methods="delta,delta_fast", argv=[])
    assert run(args) == 2  # refused before any GPU work


def test_method_modifiers():
    import torch

    from delta_attn import DeltaConfig
    from delta_attn.bench.layer import method_config, modified_configs, split_method

    base = DeltaConfig(window=128, gamma=64)
    assert split_method("delta+strided+ips8") == ("delta", ["strided", "ips8"])
    assert method_config("delta_auto+hf", base) == base.replace(delta_scale="auto")
    cfgs = modified_configs(["devtma", "ips8", "chunk16384", "bn128"], torch.bfloat16, None)
    assert cfgs["dense"]["USE_TMA"] == "device" and cfgs["sparse"]["USE_TMA"] == "device"
    assert cfgs["dense"]["ITEMS_PER_SM"] == 8 and cfgs["dense"]["MAX_CHUNK"] == 16384 and cfgs["dense"]["BN"] == 128
    assert modified_configs(["strided"], torch.bfloat16, None) is None  # a layout, not a launch option
    assert split_method("delta_auto+fa4") == ("delta_auto", ["fa4"])  # backend="fa4": no Triton launch options
    assert modified_configs(["fa4"], torch.bfloat16, None) is None
    assert split_method("delta+fa4+epi") == ("delta", ["fa4", "epi"])  # where backend="fa4" adds Δ
    assert modified_configs(["fa4", "noepi"], torch.bfloat16, None) is None
    with pytest.raises(ValueError, match="add \\+fa4"):
        split_method("delta+epi")
    for bad in ("delta+fast", "cudnn+strided", "delta+ipsx", "cudnn+fa4", "delta+noepi"):
        with pytest.raises(ValueError):
            method_config(bad, base)
