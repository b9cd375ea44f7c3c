"""Triton kernels compiled in this process, counted as they compile: the benchmarks' exact check that a call at a
never-seen prompt length compiles nothing after the warm-up (issue 16's first-call rule).

A Triton kernel compiles once per specialisation: per dtype and constexpr, and per integer argument's value class
(divisible by 16, equal to 1) unless the argument is listed in ``do_not_specialize``. This package's kernels list
every length-dependent argument there, so a new length should find every kernel already compiled; a timing ratio
says so only within its noise, this count says so exactly. The count comes from Triton's own hook
(``triton.knobs.runtime.jit_post_compile_hook``, called after each in-memory cache miss of a ``@triton.jit``
function, including a kernel loaded from Triton's disk cache), chained after any hook already installed. Inductor's
generated kernels do not call it (unless ``torch._inductor.config.run_jit_post_compile_hook``); FA4's CuTe-DSL
kernels are not Triton kernels and are not counted.
"""

from __future__ import annotations

from collections import Counter

_compiled: Counter[str] = Counter()
_installed = False


def start_counting() -> bool:
    """Install the counting hook (once per process). Returns False where Triton, or its hook, is absent (a CPU
    machine without the ``[gpu]`` extra): the counts then stay empty."""
    global _installed
    if _installed:
        return True
    try:
        from triton import knobs
    except ImportError:
        return False
    runtime = getattr(knobs, "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_post_compile_hook"):
        return False
    previous = runtime.jit_post_compile_hook

    def count(*, fn, **kwargs):
        _compiled[getattr(fn, "name", str(fn))] += 1
        return previous(fn=fn, **kwargs) if previous is not None else None

    runtime.jit_post_compile_hook = count
    _installed = True
    return True


def snapshot() -> Counter[str]:
    """The compilations counted so far, per kernel name (a copy; pass it to :func:`since`)."""
    return Counter(_compiled)


def since(before: Counter[str]) -> dict[str, int]:
    """Compilations per kernel name since ``before`` (a :func:`snapshot`); empty when nothing compiled."""
    return dict(Counter(_compiled) - before)


def describe(compiled: dict[str, int]) -> str:
    """``"compiled 3 Triton kernel(s): _sparse_kernel ×2, _dense_rows_kernel"`` (empty text for none)."""
    if not compiled:
        return ""
    names = ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in sorted(compiled.items()))
    return f"compiled {sum(compiled.values())} Triton kernel(s): {names}"
