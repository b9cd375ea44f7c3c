"""Compile every kernel launch of a call for Hopper (sm_90) on a machine *without* a GPU.

``python -m delta_attn.bench.sm90_report`` runs the Triton backend's host code on CPU tensors with
kernel launches intercepted, compiles each distinct launch ahead of time for ``cuda:90`` with the
ptxas that ships with Triton, and prints registers, spills (stack frame) and shared memory per
kernel variant (from ``cuobjdump --dump-resource-usage``). It catches compile errors and
register spills before any device time is spent; it says nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch


def capture_launches(fn):
    """Run ``fn()`` with every Triton kernel launch recorded instead of executed."""
    from triton.runtime.jit import JITFunction

    captured = []
    orig = JITFunction.run

    def fake_run(self, *args, grid, warmup, **kwargs):
        captured.append((self, args, dict(kwargs)))

    JITFunction.run = fake_run
    try:
        fn()
    finally:
        JITFunction.run = orig
    return captured


def compile_sm90(jit_fn, args, kwargs):
    """AOT-compile one recorded launch for sm_90 the way the JIT would specialise it."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    opt_names = ("num_warps", "num_stages", "num_ctas", "maxnreg")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in opt_names}
    bound = jit_fn.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(jit_fn.params):
        val = bound.arguments[p.name]
        if p.is_constexpr or val is None:
            sig[p.name] = "constexpr"
            consts[(i,)] = val
            continue
        ty, key = native_specialize_impl(CUDABackend, val, False, not p.do_not_specialize, True)
        sig[p.name] = ty
        if ty == "constexpr":
            consts[(i,)] = val
        elif key:
            attrs[(i,)] = backend.parse_attr(key)
    src = ASTSource(jit_fn, sig, consts, attrs)
    kernel = triton.compile(src, target=target, options=options)
    return kernel, {k: v for k, v in consts.items()}, options


def resource_usage(cubin: bytes) -> dict:
    from triton.backends.nvidia import compiler as nvc

    tool = os.path.join(os.path.dirname(nvc.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return dict(regs=int(m.group(1)), stack=int(m.group(2)), shared=int(m.group(3))) if m else {"raw": out}


def report(calls) -> list[dict]:
    seen, rows = set(), []
    for jit_fn, args, kwargs in calls:
        kernel, consts, options = compile_sm90(jit_fn, args, dict(kwargs))
        names = {jit_fn.params[k[0]].name: v for k, v in consts.items()}
        key = (jit_fn.__name__, tuple(sorted((k, str(v)) for k, v in names.items())), tuple(sorted(options.items())))
        if key in seen:
            continue
        seen.add(key)
        use = resource_usage(kernel.asm["cubin"])
        sass = kernel.asm.get("sass") if hasattr(kernel, "asm") else None
        rows.append(
            dict(
                kernel=jit_fn.__name__,
                constexprs={k: v for k, v in names.items() if k.isupper()},
                options=options,
                smem_meta=kernel.metadata.shared,
                wgmma="wgmma" in kernel.asm.get("ptx", ""),
                **use,
            )
        )
        del sass
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--modes", default="delta,sparse,dense")
    ap.add_argument(
        "--variants",
        default="",
        help="also compile these: strided (K/V views of a longer buffer: host 4-D TMA descriptors), hf (a model's "
        "transposed q/k/v), devtma (strided K/V, descriptors made in-kernel), auto (delta_scale='auto': anchor-row "
        "pass + per-block epilogue), lam (delta_scale=0.5 in the epilogue), bn128 (dense rows with 128-key tiles)",
    )
    args = ap.parse_args(argv)
    from ..config import DeltaConfig
    from ..kernels import prefill as pf
    from ..kernels import triton_prefill

    pf._INTERPRET = True  # let the host code accept CPU tensors; launches are intercepted anyway
    n, d = args.n, args.d
    q = torch.randn(1, 8, n, d, dtype=torch.bfloat16)
    k = torch.randn(1, 2, n, d, dtype=torch.bfloat16)
    v = torch.randn(1, 2, n, d, dtype=torch.bfloat16)

    from ..kernels import sparse as sparse_mod
    from ..kernels.dense_rows import CONFIG as DENSE_CONFIG

    variants = [x for x in args.variants.split(",") if x]
    base = DeltaConfig(window=1024)

    def calls():
        for mode in args.modes.split(","):
            triton_prefill(q, k, v, base.replace(mode=mode), scale=d**-0.5, prompt_len=n)
        kb, vb = (torch.randn(1, 2, n + 512, d, dtype=torch.bfloat16) for _ in range(2))
        ks, vs = kb[:, :, :n], vb[:, :, :n]
        for var in variants:
            cfg, qq, kk, vv, kc = base, q, k, v, None
            if var in ("strided", "devtma"):
                kk, vv = ks, vs
            if var == "devtma":
                kc = {
                    "dense": dict(DENSE_CONFIG["half"], USE_TMA="device"),
                    "sparse": dict(sparse_mod.CONFIG["half"], USE_TMA="device"),
                }
            if var == "hf":
                qq, kk, vv = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
            if var == "auto":
                cfg = base.replace(delta_scale="auto")
            if var == "lam":
                cfg = base.replace(delta_scale=0.5)
            if var == "bn128":
                kc = {"dense": dict(DENSE_CONFIG["half"], BN=128, num_stages=2)}
            triton_prefill(qq, kk, vv, cfg, scale=d**-0.5, prompt_len=n, kernel_configs=kc)

    rows = report(capture_launches(calls))
    for r in rows:
        print(
            f"{r['kernel']:22s} regs={r.get('regs')} stack={r.get('stack')} smem={r['smem_meta']} "
            f"wgmma={r['wgmma']} {r['options']} {r['constexprs']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
