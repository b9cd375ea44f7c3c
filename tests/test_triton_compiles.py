"""delta_attn.bench.triton_compiles: the benchmarks' count of Triton compilations per cell. On the CI machine (no
Triton) and here, Triton's hook is driven by a stand-in ``triton.knobs`` module, called as Triton calls it; the real
hook's presence is checked where Triton is installed."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from delta_attn.bench import e2e_report, triton_compiles


@pytest.fixture
def fresh(monkeypatch):
    """A process where the counter was never installed and has counted nothing."""
    monkeypatch.setattr(triton_compiles, "_installed", False)
    monkeypatch.setattr(triton_compiles, "_compiled", triton_compiles.Counter())


def _stand_in_triton(monkeypatch, previous=None):
    runtime = types.SimpleNamespace(jit_post_compile_hook=previous)
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(knobs=types.SimpleNamespace(runtime=runtime)))
    return runtime


def _compile(runtime, name: str):  # what triton.runtime.jit.JITFunction._call_hook passes
    info = types.SimpleNamespace(module="delta_attn.kernels.sparse", name=name, jit_function=None)
    return runtime.jit_post_compile_hook(
        key="k", repr=name, fn=info, compile={}, is_manual_warmup=False, already_compiled=False
    )


def test_counts_each_kernels_compilations_since_a_snapshot_and_chains_the_previous_hook(fresh, monkeypatch):
    seen = []
    runtime = _stand_in_triton(monkeypatch, previous=lambda **kw: seen.append(kw["fn"].name))
    assert triton_compiles.start_counting() and triton_compiles.start_counting()  # once: the second is a no-op
    n_sparse = int(torch.randint(1, 5, ()))
    _compile(runtime, "_dense_rows_kernel")
    before = triton_compiles.snapshot()
    for _ in range(n_sparse):
        _compile(runtime, "_sparse_kernel")
    assert triton_compiles.since(before) == {"_sparse_kernel": n_sparse}
    assert triton_compiles.since(triton_compiles.snapshot()) == {}
    assert seen == ["_dense_rows_kernel"] + ["_sparse_kernel"] * n_sparse  # the earlier hook still runs
    text = triton_compiles.describe(triton_compiles.since(triton_compiles.Counter()))
    expected = f"compiled {n_sparse + 1} Triton kernel(s): _dense_rows_kernel, _sparse_kernel"
    assert text == expected + (f" ×{n_sparse}" if n_sparse > 1 else "")


def test_without_triton_nothing_is_counted_and_nothing_fails(fresh, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `from triton import knobs` raises ImportError
    assert not triton_compiles.start_counting()
    assert triton_compiles.since(triton_compiles.snapshot()) == {} and triton_compiles.describe({}) == ""
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(knobs=types.SimpleNamespace()))  # too old
    assert not triton_compiles.start_counting()


def test_installed_triton_has_the_hook_the_counter_uses():
    pytest.importorskip("triton")  # the GPU image's triton 3.6; absent on the CI machine (the stand-ins above run)
    from triton import knobs
    from triton.runtime.jit import JitFunctionInfo

    assert hasattr(knobs.runtime, "jit_post_compile_hook") and "name" in JitFunctionInfo.__annotations__


def test_the_e2e_report_marks_a_cell_that_compiled_triton_kernels():
    from test_bench_e2e_report import TINY_REPORT_META, _results

    res = _results({1024: 1.0}, {1024: 0.5})
    res["cells"][0]["triton_compiled"], res["cells"][1]["triton_compiled"] = {}, {"_sparse_kernel": 2}
    md = e2e_report.markdown(dict(res, meta=TINY_REPORT_META))
    rows = [line for line in md.splitlines() if "compiled 2 Triton kernel(s): _sparse_kernel ×2" in line]
    assert len(rows) == 1 and "| delta |" in rows[0]
