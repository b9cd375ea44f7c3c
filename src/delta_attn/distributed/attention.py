"""``cp_delta_attention``: Δ attention with the sequence split over the ranks of a process group.

Rank r holds the contiguous rows ``[q0, q1)`` of the prompt (q0 = r·n; every rank holds n rows, the
last may hold fewer) and gets exactly those output rows, equal to single-device
:func:`delta_attn.delta_attention` on the whole sequence up to rounding (docs/algorithm.md §14).

What is exchanged, per call:

1. the shard shapes (a few ints per rank, ``all_gather_object``): every rank validates every
   rank's inputs, so a bad input on one rank raises the same error on all of them instead of
   leaving the others waiting in a collective;
2. K and V (``all_gather_single``): each rank needs the keys ``[0, q1)`` for its dense anchor/tail
   rows; the sparse rows only read sink + window halo, but the dense rows read every
   earlier key, so all of K and V is gathered (2·B·Hkv·N·D elements per rank — the same as the
   KV cache a single device would hold; Q and the output stay sharded);
3. one small summary per rank (B·Hq·(1+S)·D numbers + 3 ints): the Δ of its last anchor and its
   ``ema``/``abg`` filter end state, from which each rank computes its carries
   (:mod:`delta_attn.distributed.shard`).

Compute is one backend call per rank (``select_backend``: Triton on CUDA, the reference on CPU)
plus an O(rows·D) fix-up. The causal load is *not* balanced: the dense anchor rows of the last rank
see ~N keys, those of the first ~n (see docs/algorithm.md §14 for the numbers and the plan).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import CAUSAL_SCALE_MODES, DEFAULT_CONFIG, DeltaConfig
from ..ops import check_qkv, select_backend
from ..sparse import BlockMethod, DenseMethod, MaskModMethod, StreamingMethod, resolve_sparse_method
from .shard import ShardSummary, apply_carry, carries_from_summaries, local_shard

STATIC_BASES = (StreamingMethod, BlockMethod, DenseMethod, MaskModMethod)


@dataclass
class CPResult:
    """Output rows of this rank and the gathered keys/values of the whole sequence (B, Hkv, N, D)."""

    out: Tensor
    keys: Tensor
    values: Tensor
    q_start: int
    seq_len: int


def _check_config(config: DeltaConfig) -> None:
    if not isinstance(config, DeltaConfig):
        raise TypeError(f"config must be a DeltaConfig, got {type(config).__name__}")
    config.require_causal("the sequence cannot be split over ranks")
    if config.mode == "delta" and config.delta_scale in CAUSAL_SCALE_MODES:
        raise NotImplementedError(
            f"delta_scale={config.delta_scale!r} carries running sums whose ratio sets each block's λ; "
            "context parallelism does not exchange them yet: use a float delta_scale (or run the prompt on one device)"
        )
    if config.mode != "dense" and not isinstance(resolve_sparse_method(config.sparse), STATIC_BASES):
        raise ValueError(
            f"sparse={config.method_name!r} estimates its pattern from the whole call's queries and keys, so a "
            "shard would pick a different pattern than the single-device call; context parallelism supports "
            "the static bases (streaming, block, dense, mask_mod methods)"
        )


def _local_problem(q, k, v, config, scale, backend_name: str) -> str | None:
    """What is wrong with this rank's inputs (None when nothing is); never raises."""
    try:
        _check_config(config)
    except (TypeError, ValueError, NotImplementedError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        check_qkv(q, k, v, same_rows=True)
    except (TypeError, ValueError) as exc:
        return str(exc)
    if q.shape[2] == 0:
        return "this rank's shard is empty: every rank needs at least one row"
    if "nccl" in backend_name and q.device.type != "cuda":
        return f"the process group uses NCCL but the tensors are on {q.device}: move them to this rank's GPU"
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0
    ):
        return f"scale must be a positive finite float, got {scale!r}"
    return None


def _config_key(config: DeltaConfig) -> tuple:
    """The config as plain values (the base by name), to check that every rank runs the same one."""
    return (config.method_name,) + tuple(
        (f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "sparse"
    )


def _exchange_shapes(q, k, v, config, scale, group) -> list[int]:
    """Validate every rank's inputs on every rank; returns the shard lengths (raises the same error everywhere)."""
    backend_name = str(dist.get_backend(group))
    problem = _local_problem(q, k, v, config, scale, backend_name)
    info = {"problem": problem}
    if problem is None:
        info.update(
            shape=(q.shape[0], q.shape[1], k.shape[1], q.shape[3]),
            n=q.shape[2],
            dtype=str(q.dtype),
            device=q.device.type,
            scale=None if scale is None else float(scale),
            config=_config_key(config),
        )
    infos: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(infos, info, group=group)
    bad = [f"rank {r}: {i['problem']}" for r, i in enumerate(infos) if i["problem"]]
    if not bad:
        first, last = infos[0], len(infos) - 1
        for r, i in enumerate(infos):
            for key in ("shape", "dtype", "device", "scale", "config"):
                if i[key] != first[key]:
                    what = "config" if key == "config" else f"{key} {i[key]}"  # configs are long: name only
                    bad.append(f"rank {r}: {what} differs from rank 0's")
            if r < last and i["n"] != first["n"]:
                bad.append(f"rank {r}: holds {i['n']} rows but rank 0 {first['n']} (only the last may hold fewer)")
            if r == last and i["n"] > first["n"]:
                bad.append(f"rank {r} (the last): holds {i['n']} rows, more than rank 0's {first['n']}")
    if bad:
        raise ValueError("cp_delta_attention: " + "; ".join(bad))
    return [i["n"] for i in infos]


def gather_sequence(x: Tensor, lengths: list[int], group=None) -> Tensor:
    """All-gather the shards (B, H, n_r, D) of every rank into (B, H, Σn_r, D) (last dim contiguous).

    Gathered in a (positions, B, H, D) layout so the result needs no second copy: one buffer of the
    whole sequence (the last shard padded to n_0) plus this rank's shard.
    """
    world = len(lengths)
    if world == 1:
        return x
    n0, total = lengths[0], sum(lengths)
    local = x.permute(2, 0, 1, 3)
    if local.shape[0] < n0:
        local = torch.cat([local, local.new_zeros(n0 - local.shape[0], *local.shape[1:])])
    buf = local.new_empty(world * n0, *local.shape[1:])
    gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    gather_into(buf, local.contiguous(), group=group)
    return buf[:total].permute(1, 2, 0, 3)


def _exchange_summaries(summary: ShardSummary, group, world: int) -> list[ShardSummary]:
    packed = torch.cat([summary.last_delta.unsqueeze(-2), summary.scan_end], dim=-2).contiguous()
    ints = torch.tensor([summary.n_body, summary.open_rows, int(summary.has_anchor)], device=packed.device)
    all_packed = [torch.empty_like(packed) for _ in range(world)]
    all_ints = [torch.empty_like(ints) for _ in range(world)]
    dist.all_gather(all_packed, packed, group=group)
    dist.all_gather(all_ints, ints, group=group)
    return [
        ShardSummary(int(i[0]), int(i[1]), bool(i[2]), p[..., 0, :], p[..., 1:, :])
        for p, i in zip(all_packed, [t.tolist() for t in all_ints])
    ]


def cp_attention(
    q: Tensor, k: Tensor, v: Tensor, config: DeltaConfig | None = None, *, group=None, scale: float | None = None
) -> CPResult:
    """:func:`cp_delta_attention` that also returns the gathered K/V (for a KV cache) and the shard's place."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("cp_delta_attention needs torch.distributed: call torch.distributed.init_process_group")
    config = DEFAULT_CONFIG if config is None else config
    lengths = _exchange_shapes(q, k, v, config, scale, group)
    rank, world = dist.get_rank(group), len(lengths)
    q0, q1, total = sum(lengths[:rank]), sum(lengths[: rank + 1]), sum(lengths)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    keys, values = gather_sequence(k, lengths, group), gather_sequence(v, lengths, group)
    backend = select_backend(config, q.device)
    out, summary = local_shard(
        q, keys[:, :, :q1], values[:, :, :q1], config, scale=scale, prompt_len=total, backend=backend
    )
    if config.mode == "delta" and world > 1:
        summaries = _exchange_summaries(summary, group, world)
        delta_in, s_start = carries_from_summaries(config, summaries, rank)
        out = apply_carry(out, config, summary, delta_in, s_start)
    return CPResult(out.to(q.dtype), keys, values, q0, total)


def cp_delta_attention(
    q: Tensor, k: Tensor, v: Tensor, config: DeltaConfig | None = None, *, group=None, scale: float | None = None
) -> Tensor:
    """Context-parallel :func:`delta_attn.delta_attention`: this rank's output rows of the whole prompt.

    Args:
        q: (B, Hq, n, D), k, v: (B, Hkv, n, D): this rank's contiguous shard of the sequence. Rank r of
            ``group`` holds positions ``[r·n, r·n + n)``; every rank holds the same n except the last,
            which may hold fewer (≥ 1). Same batch, heads, head dim, dtype and device on every rank.
        config: a causal :class:`DeltaConfig` with a static base (``streaming``, ``block``, ``dense``
            or a ``mask_mod`` method); default ``DeltaConfig()``.
        group: the process group (default: the world).
        scale: softmax scale, default ``1/sqrt(D)``.
    Returns:
        (B, Hq, n, D) in q's dtype: rows ``[r·n, r·n + n)`` of ``delta_attention`` on the whole sequence.
    Raises:
        ValueError on every rank (naming the rank) when any rank's input is invalid — a non-causal
        config (naming ``config.non_causal_reason``), mismatched shapes/dtypes/devices, a shard longer
        than rank 0's; RuntimeError without an initialized process group. A rank that fails later (inside
        the computation, e.g. out of memory) leaves the others in a collective until the group's timeout:
        pass ``timeout=`` to ``init_process_group``. With NCCL, call ``torch.cuda.set_device`` (or pass
        ``device_id``) first: the shape exchange uses ``all_gather_object``.
    """
    return cp_attention(q, k, v, config, group=group, scale=scale).out
