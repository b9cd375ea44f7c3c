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
