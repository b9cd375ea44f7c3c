"""Running the kernels on CPU with Triton's interpreter (``TRITON_INTERPRET=1``), for tests.

Triton 3.6's interpreter turns loop bounds into Python ints with ``int(array)``, which numpy ≥ 2.4
refuses for 1-element arrays; :func:`enable` patches that one conversion. It changes nothing when
kernels are compiled for a GPU.
"""

from __future__ import annotations

import os


def active() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def enable() -> None:
    """Make the interpreter usable with numpy 2.4+ (idempotent)."""
    import numpy as np
    from triton.runtime import interpreter as it

    orig = it._patch_lang_tensor
    if getattr(orig, "_numpy2_index", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._numpy2_index = True
    it._patch_lang_tensor = patched


def record_specialisations(kernels: dict, *, arch: int = 90) -> dict[str, set]:
    """Record, per kernel, the distinct compile keys its launches would have on a GPU of ``arch``.

    ``kernels``: name → a ``@triton.jit`` function (interpreted or not). From then on every launch
    (``kernel[grid](...)``) first computes Triton's own specialisation of its arguments — argument
    types, 16-byte alignment of pointers, divisibility by 16 and ``== 1`` of integers, every
    ``tl.constexpr`` — and the launch options (``num_warps``, ``num_stages``), exactly as
    :meth:`triton.runtime.jit.JITFunction.run` keys its cache of compiled kernels. Each distinct key
    is one compilation on the GPU, so a key first seen at a new prompt length is a recompilation
    there. Returns the dict that fills up (name → set of keys). Works without a GPU (CPU tensors
    under the interpreter: the alignment is that of the real tensors, not of host copies).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    seen: dict[str, set] = {name: set() for name in kernels}
    for name, fn in kernels.items():
        raw = getattr(fn, "fn", fn)
        opts = dict(getattr(fn, "kwargs", {}))  # interpreted: the jit options it was made with
        if isinstance(fn, JITFunction):
            opts = dict(do_not_specialize=fn.do_not_specialize)
        jit = JITFunction(raw, **{k: v for k, v in opts.items() if k in ("do_not_specialize", "version")})
        binder = create_function_from_signature(jit.signature, jit.params, backend)
        original = fn.run

        def run(*args, grid, warmup, _name=name, _binder=binder, _original=original, **kwargs):
            _, spec, options = _binder(*args, **kwargs)
            seen[_name].add((repr(spec), repr(sorted(options.items()))))
            return _original(*args, grid=grid, warmup=warmup, **kwargs)

        fn.run = run
    return seen
