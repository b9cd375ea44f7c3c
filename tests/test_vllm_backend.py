"""The vLLM backend on CPU: plugin registration, settings, batch planning, and Δ over a fake paged KV cache.

vLLM itself is not installed here (it needs its CUDA build); the registration is checked against a stand-in
of its registry module, and the Δ path (:func:`delta_attn.vllm.paged.run_delta_rows`, the code the backend's
``forward`` runs) against one-shot :func:`delta_attention` on the same Q/K/V laid out in blocks. The last
test runs only where vLLM 0.25.1 imports (its real classes; scripts/gpu_vllm.sh runs it on the GPU machine).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from delta_attn import DeltaConfig, delta_attention
from delta_attn.vllm import BACKEND_CLASS_PATH, parse_settings, register
from delta_attn.vllm.paged import paged_prefix, run_delta_rows
from delta_attn.vllm.plan import (
    DeltaRows,
    DenseRows,
    PrefillCarry,
    chunk_rows,
    dense_batch,
    needs_carry,
    plan_batch,
)
from delta_attn.vllm.settings import default_min_prompt

ROOT = Path(__file__).resolve().parents[1]


# ---- packaging and registration ----------------------------------------------------------------------------


def test_importing_delta_attn_or_its_vllm_package_does_not_import_vllm():
    code = (
        "import sys, delta_attn, delta_attn.vllm, delta_attn.vllm.plan, delta_attn.vllm.paged\n"
        "print(sorted(m for m in sys.modules if m == 'vllm' or m.startswith('vllm.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pyproject_declares_the_plugin_entry_point_and_the_extra():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["vllm.general_plugins"] == {"delta_attn": "delta_attn.vllm:register"}
    assert project["optional-dependencies"]["vllm"] == ["vllm==0.25.1"]


def _fake_vllm(monkeypatch, version: str) -> list:
    """Stand-ins for ``vllm`` and its backend registry module; returns the list of registrations."""
    calls: list = []

    class AttentionBackendEnum:
        CUSTOM = object()
        FLASH_ATTN = object()

    registry = types.ModuleType("vllm.v1.attention.backends.registry")
    registry.AttentionBackendEnum = AttentionBackendEnum
    registry.register_backend = lambda backend, class_path=None, is_mamba=False: calls.append((backend, class_path))
    root = types.ModuleType("vllm")
    root.__version__ = version
    monkeypatch.setitem(sys.modules, "vllm", root)
    for name in ("vllm.v1", "vllm.v1.attention", "vllm.v1.attention.backends"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.attention.backends.registry", registry)
    return calls, AttentionBackendEnum


def test_register_fills_vllms_custom_backend_slot_with_the_delta_backend(monkeypatch):
    calls, enum = _fake_vllm(monkeypatch, "0.25.1")
    register()
    register()  # vLLM loads general plugins once per process, but a second call must be harmless
    assert calls == [(enum.CUSTOM, BACKEND_CLASS_PATH)] * 2
    module, cls = BACKEND_CLASS_PATH.rsplit(".", 1)
    source = (ROOT / "src" / Path(*module.split("."))).with_suffix(".py").read_text()
    assert f"class {cls}(FlashAttentionBackend)" in source


def test_register_with_another_vllm_version_registers_nothing_and_says_why(monkeypatch, caplog):
    calls, _ = _fake_vllm(monkeypatch, "0.27.1")
    with caplog.at_level("WARNING", logger="delta_attn.vllm"):
        register()
    assert calls == []
    assert "0.27.1" in caplog.text and "vllm==0.25.1" in caplog.text


# ---- settings ------------------------------------------------------------------------------------------------


def test_settings_default_to_deltaconfig_defaults():
    for extra in (None, {}, {"other_plugin": {"x": 1}}, {"delta": {}}):
        s = parse_settings(extra)
        assert s.config == DeltaConfig()
        assert s.min_prompt == default_min_prompt(DeltaConfig()) == 2 * (128 + 2048)


def test_settings_take_deltaconfig_fields_and_min_prompt():
    s = parse_settings({"delta": {"window": 512, "sink": 64, "gamma": 32, "interp": "ema", "min_prompt": 100}})
    assert s.config == DeltaConfig(window=512, sink=64, gamma=32, interp="ema")
    assert s.min_prompt == 100
    assert s.takes_delta(100) and not s.takes_delta(99)
    assert parse_settings({"delta": {"window": 100, "sink": 10}}).min_prompt == 220
    assert parse_settings({"delta": {"delta_scale": "auto"}}).config.delta_scale == "auto"


@pytest.mark.parametrize(
    ("delta", "error", "words"),
    [
        ({"windw": 10}, ValueError, ["'windw'", "window", "min_prompt"]),
        ({"gamma": 0}, ValueError, ["additional_config['delta']", "DeltaConfig.gamma"]),
        ({"window": "big"}, TypeError, ["DeltaConfig.window"]),
        ({"mode": "fast"}, ValueError, ["DeltaConfig.mode"]),
        ({"min_prompt": 0}, ValueError, ["'min_prompt'"]),
        ({"min_prompt": True}, ValueError, ["'min_prompt'"]),
        ({"interp": "linear"}, ValueError, ['interp="linear"', "chunks"]),
        ({"delta_scale": "auto-global"}, ValueError, ["auto-global", "chunks"]),
        ({"extra_anchors": 0.25}, ValueError, ["extra_anchors", "chunks"]),
        ({"sparse": 3}, TypeError, ["'sparse'"]),
    ],
)
def test_settings_errors_name_the_field(delta, error, words):
    with pytest.raises(error) as info:
        parse_settings({"delta": delta})
    for word in words:
        assert word in str(info.value)


def test_settings_must_be_an_object():
    with pytest.raises(TypeError, match="JSON object"):
        parse_settings({"delta": [1, 2]})


# ---- planning --------------------------------------------------------------------------------------------------


def test_plan_splits_a_mixed_batch():
    # decode (1 token), short prompt, long prompt's first chunk, long prompt's middle chunk, a resumed request
    # re-prefilling its prompt's last 5 rows and 3 output tokens, a padded slot
    query_lens = [1, 50, 300, 200, 8, 0]
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    seq_lens = [5000, 50, 300, 900, 1003, 0]
    prompt_lens = [4990, 50, 2000, 1500, 1000]
    ids = ["dec", "short", "long0", "long1", "resumed"]
    plan = plan_batch(qsl, seq_lens, prompt_lens, ids, min_prompt=1000)
    assert plan.dense == (
        DenseRows(0, 1, 0),
        DenseRows(1, 51, 1),
        DenseRows(556, 559, 4),
    )
    assert plan.delta == (
        DeltaRows(51, 351, 2, "long0", 0, 2000),
        DeltaRows(351, 551, 3, "long1", 700, 1500),
        DeltaRows(551, 556, 4, "resumed", 995, 1000),
    )
    assert [r.is_last_chunk for r in plan.delta] == [False, False, True]
    # without prompt lengths (the runner did not tell), everything stays on FlashAttention
    unknown = plan_batch(qsl, seq_lens, None, None, min_prompt=1000)
    assert not unknown.has_delta and [r.req_index for r in unknown.dense] == [0, 1, 2, 3, 4]


def test_plan_covers_every_token_once(seed):
    rng = random.Random(seed)
    for _ in range(200):
        n_req = rng.randint(1, 8)
        qsl, seq_lens, prompt_lens = [0], [], []
        for _ in range(n_req):
            prompt = rng.randint(1, 3000)
            computed = rng.randint(0, prompt + 20)
            n = rng.randint(0, 400)
            qsl.append(qsl[-1] + n)
            seq_lens.append(computed + n)
            prompt_lens.append(prompt)
        known = rng.randint(0, n_req)
        min_prompt = rng.randint(1, 2000)
        ids = [f"r{i}" for i in range(known)]
        plan = plan_batch(qsl, seq_lens, prompt_lens[:known], ids, min_prompt)
        owner = [None] * qsl[-1]
        for rows in plan.dense + plan.delta:
            for t in range(rows.token_lo, rows.token_hi):
                assert owner[t] is None
                owner[t] = rows
        assert None not in owner
        for t, rows in enumerate(owner):
            r = next(i for i in range(n_req) if qsl[i] <= t < qsl[i + 1])
            assert rows.req_index == r
            position = seq_lens[r] - (qsl[r + 1] - t)
            is_delta = isinstance(rows, DeltaRows)
            assert is_delta == (r < known and prompt_lens[r] >= min_prompt and position < prompt_lens[r])
            if is_delta:
                assert rows.q_start + t - rows.token_lo == position and rows.prompt_len == prompt_lens[r]


def test_dense_batch_slices_a_contiguous_run_and_gathers_otherwise():
    run = dense_batch([DenseRows(3, 5, 1), DenseRows(0, 3, 0)])
    assert run.token_range == (0, 5) and run.token_index is None
    assert run.cu_seqlens_q == (0, 3, 5) and run.req_index == (0, 1) and run.max_query_len == 3
    gaps = dense_batch([DenseRows(0, 2, 0), DenseRows(7, 8, 3)])
    assert gaps.token_range is None and gaps.token_index == (0, 1, 7)
    assert gaps.cu_seqlens_q == (0, 2, 3) and gaps.n_tokens == 3
    assert dense_batch([]) is None


def test_chunk_rows_without_the_carry():
    cfg = DeltaConfig(window=32, sink=4, gamma=8, tail=16)
    rows = DeltaRows(0, 30, 0, "a", 45, 400)
    assert needs_carry(cfg, 45, 400) and not needs_carry(cfg, 48, 400) and not needs_carry(cfg, 0, 400)
    assert not needs_carry(cfg, 390, 400)  # inside the exact tail: no body rows
    assert not needs_carry(cfg.replace(mode="recompute"), 45, 400)
    assert chunk_rows(cfg, rows, have_carry=True).dense_until == 45
    # repeat restarts at the next anchor; the rows before it are computed exactly
    assert chunk_rows(cfg, rows, have_carry=False).dense_until == 48
    assert chunk_rows(cfg, DeltaRows(0, 2, 0, "a", 45, 400), have_carry=False).dense_until == 47
    # a filter or a running λ cannot restart mid-prompt: the whole chunk is exact
    for other in (cfg.replace(interp="ema"), cfg.replace(delta_scale="auto"), cfg.replace(delta_scale="auto-decay")):
        assert needs_carry(other, 48, 400)
        assert chunk_rows(other, rows, have_carry=False).dense_until == 75


def test_prefill_carry_keeps_state_per_request_and_drops_it_after_the_last_chunk(caplog):
    cfg = DeltaConfig(window=32, sink=4, gamma=8, tail=16)
    carry = PrefillCarry(capacity=2)
    first = DeltaRows(0, 100, 0, "a", 0, 250)
    plan, state = carry.begin(cfg, first)
    assert plan.dense_until == 0 and state is not None and "a" in carry
    state.group((0,)).next_pos = 100  # what delta_attention's finish() leaves
    carry.end(first)
    assert "a" in carry
    second = DeltaRows(0, 150, 0, "a", 100, 250)
    plan, again = carry.begin(cfg, second)
    assert again is state and plan.dense_until == 100
    carry.end(second)
    assert "a" not in carry and len(carry) == 0
    # a state left at another position (an earlier attempt of the request) is not used
    carry.begin(cfg, DeltaRows(0, 10, 0, "b", 0, 250))
    with caplog.at_level("WARNING", logger="delta_attn.vllm"):
        plan, _ = carry.begin(cfg, DeltaRows(0, 10, 0, "b", 13, 250))
    assert plan.dense_until == 16 and "request b" in caplog.text
    # capacity: the oldest unfinished prompt is forgotten
    carry.begin(cfg, DeltaRows(0, 10, 0, "c", 0, 250))
    carry.begin(cfg, DeltaRows(0, 10, 0, "d", 0, 250))
    assert "b" not in carry and "c" in carry and "d" in carry


# ---- Δ over a fake paged cache --------------------------------------------------------------------------------

BLOCK = 16


class FakePagedCache:
    """One layer's vLLM cache, (num_blocks, 2, BLOCK, Hkv, D), with shuffled block tables (as vLLM hands out blocks)."""

    def __init__(self, lengths: list[int], heads_kv: int, dim: int, dtype=torch.float64):
        need = [math.ceil(n / BLOCK) for n in lengths]
        total = sum(need) + 3
        self.kv = torch.randn(total, 2, BLOCK, heads_kv, dim, dtype=dtype)  # unwritten slots hold noise
        order = torch.randperm(total)
        width = max(need) + 2
        self.block_table = torch.zeros(len(lengths), width, dtype=torch.int32)
        start = 0
        for r, n in enumerate(need):
            self.block_table[r, :n] = order[start : start + n].int()
            start += n

    def write(self, req: int, positions: range, k: torch.Tensor, v: torch.Tensor) -> None:
        """vLLM's reshape_and_cache: k, v (n, Hkv, D) to the request's slots of ``positions``."""
        for i, p in enumerate(positions):
            block = int(self.block_table[req, p // BLOCK])
            self.kv[block, 0, p % BLOCK] = k[i]
            self.kv[block, 1, p % BLOCK] = v[i]


def _dense_rows_like_flash_attention(query, cache: FakePagedCache, batch, seq_lens, scale):
    """What FlashAttention's varlen call computes for a DenseBatch: each piece bottom-right causal over its keys."""
    tokens = list(range(*batch.token_range)) if batch.token_range else list(batch.token_index)
    q = query[tokens]
    out = torch.empty_like(q)
    for i, r in enumerate(batch.req_index):
        lo, hi = batch.cu_seqlens_q[i], batch.cu_seqlens_q[i + 1]
        n_keys = seq_lens[r]
        k = paged_prefix(cache.kv[:, 0], cache.block_table[r], n_keys)
        v = paged_prefix(cache.kv[:, 1], cache.block_table[r], n_keys)
        rows = delta_attention(
            q[lo:hi].permute(1, 0, 2).unsqueeze(0), k, v, DeltaConfig(mode="dense", backend="reference"), scale=scale
        )
        out[lo:hi] = rows[0].permute(1, 0, 2)
    return tokens, out


CONFIGS = {
    "repeat": DeltaConfig(window=32, sink=4, gamma=8, tail=16, backend="reference"),
    "ema": DeltaConfig(window=24, sink=2, gamma=8, tail=12, interp="ema", backend="reference"),
    # window < γ: every anchor but the first has a Δ ≠ 0 (with Δ = 0 anchors the core's chunked λ differs from
    # one-shot when a chunk ends before the first Δ ≠ 0: reported, not this backend's)
    "auto": DeltaConfig(window=12, sink=2, gamma=16, tail=16, delta_scale="auto", backend="reference"),
    "recompute": DeltaConfig(window=32, sink=4, gamma=8, tail=16, mode="recompute", backend="reference"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_chunked_delta_over_the_paged_cache_equals_one_shot(seed, name):
    """Two long prompts prefilled over 2–3 vLLM steps next to a decode request and a short prompt."""
    cfg = CONFIGS[name]
    rng = random.Random(seed)
    hq, hkv, dim = 4, 2, 8
    scale = dim**-0.5
    prompts = [rng.randint(180, 320), rng.randint(150, 260)]
    decode_ctx, short_len = rng.randint(120, 170), rng.randint(5, 40)
    lengths = prompts + [decode_ctx + 3, short_len]
    cache = FakePagedCache(lengths, hkv, dim)
    q = [torch.randn(n, hq, dim, dtype=torch.float64) for n in lengths]
    k = [torch.randn(n, hkv, dim, dtype=torch.float64) for n in lengths]
    v = [torch.randn(n, hkv, dim, dtype=torch.float64) for n in lengths]
    cache.write(2, range(decode_ctx), k[2][:decode_ctx], v[2][:decode_ctx])  # the decode request's earlier context
    # chunk boundaries at random positions (mostly inside γ-blocks), 2 or 3 chunks per prompt
    cuts = []
    for n in prompts:
        inner = sorted(rng.sample(range(1, n), rng.randint(1, 2)))
        cuts.append([0, *inner, n])
    expected = [
        delta_attention(
            q[r].permute(1, 0, 2).unsqueeze(0),
            k[r].permute(1, 0, 2).unsqueeze(0),
            v[r].permute(1, 0, 2).unsqueeze(0),
            cfg,
            scale=scale,
        )[0].permute(1, 0, 2)
        for r in range(2)
    ]
    got = [torch.full_like(q[r], float("nan")) for r in range(2)]
    carry = PrefillCarry()
    done = [0, 0]  # chunks done per prompt
    steps = max(len(c) - 1 for c in cuts)
    for step in range(steps):
        # one vLLM step: the decode token first (model runner V2 order), the short prompt in the first step, then
        # each long prompt's next chunk; the tokens of every request are written to the cache before attention
        pieces = [(2, decode_ctx + step, decode_ctx + step + 1)]
        if step == 0:
            pieces.append((3, 0, short_len))
        for r in range(2):
            if done[r] < len(cuts[r]) - 1:
                pieces.append((r, cuts[r][done[r]], cuts[r][done[r] + 1]))
                done[r] += 1
        rng.shuffle(pieces[1:])  # FlashAttention rows need not be contiguous in the batch
        qsl, seq_lens, queries = [0], [0] * len(lengths), []
        order = []
        for r, lo, hi in pieces:
            cache.write(r, range(lo, hi), k[r][lo:hi], v[r][lo:hi])
            qsl.append(qsl[-1] + hi - lo)
            seq_lens[r] = hi
            queries.append(q[r][lo:hi])
            order.append(r)
        query = torch.cat(queries)
        # the batch lists requests in piece order: map to per-slot arrays as vLLM's metadata does
        slot_seq = [seq_lens[r] for r in order]
        slot_prompt = [prompts[r] if r < 2 else (decode_ctx if r == 2 else short_len) for r in order]
        slot_ids = [f"req{r}" for r in order]
        plan = plan_batch(qsl, slot_seq, slot_prompt, slot_ids, min_prompt=100)
        block_table = cache.block_table[order]
        output = torch.full_like(query, float("nan"))
        run_delta_rows(plan.delta, query, output, cache.kv[:, 0], cache.kv[:, 1], block_table, carry, cfg, scale=scale)
        batch = dense_batch(plan.dense)
        slot_cache = FakePagedCache.__new__(FakePagedCache)
        slot_cache.kv, slot_cache.block_table = cache.kv, block_table
        tokens, dense_out = _dense_rows_like_flash_attention(query, slot_cache, batch, slot_seq, scale)
        output[tokens] = dense_out
        assert not torch.isnan(output).any()
        for slot, (r, lo, hi) in enumerate(pieces):
            rows = output[qsl[slot] : qsl[slot + 1]]
            if r < 2:
                got[r][lo:hi] = rows
            else:  # decode and short prompt: exact attention
                kk, vv = k[r][:hi].permute(1, 0, 2)[None], v[r][:hi].permute(1, 0, 2)[None]
                want = delta_attention(
                    q[r][lo:hi].permute(1, 0, 2)[None], kk, vv, DeltaConfig(mode="dense", backend="reference")
                )[0].permute(1, 0, 2)
                torch.testing.assert_close(rows, want, rtol=1e-10, atol=1e-10)
    assert len(carry) == 0  # every prompt finished: no state left
    for r in range(2):
        torch.testing.assert_close(got[r], expected[r], rtol=1e-10, atol=1e-10)


def test_a_missing_carry_computes_the_open_block_exactly_and_restarts_at_the_anchor(seed):
    cfg = CONFIGS["repeat"]
    hq, hkv, dim, n = 4, 2, 8, 260
    q0 = 8 * random.randint(5, 20) + random.randint(1, 7)  # inside a γ-block
    cache = FakePagedCache([n], hkv, dim)
    q = torch.randn(n, hq, dim, dtype=torch.float64)
    k = torch.randn(n, hkv, dim, dtype=torch.float64)
    v = torch.randn(n, hkv, dim, dtype=torch.float64)
    cache.write(0, range(n), k, v)  # positions before q0 came from the prefix cache
    out = torch.full_like(q[q0:], float("nan"))
    rows = plan_batch([0, n - q0], [n], [n], ["cached"], min_prompt=1).delta
    run_delta_rows(rows, q[q0:], out, cache.kv[:, 0], cache.kv[:, 1], cache.block_table, PrefillCarry(), cfg, scale=0.3)
    as4 = lambda t: t.permute(1, 0, 2)[None]
    one_shot = delta_attention(as4(q), as4(k), as4(v), cfg, scale=0.3)[0].permute(1, 0, 2)
    exact = delta_attention(as4(q), as4(k), as4(v), cfg.replace(mode="dense"), scale=0.3)[0].permute(1, 0, 2)
    anchor = -(-q0 // 8) * 8
    torch.testing.assert_close(out[: anchor - q0], exact[q0:anchor], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[anchor - q0 :], one_shot[anchor:], rtol=1e-10, atol=1e-10)


# ---- against the real vLLM classes (where vLLM 0.25.1 imports) ------------------------------------------------


def test_backend_classes_subclass_vllms_flash_attention():
    pytest.importorskip("vllm.v1.attention.backends.flash_attn", reason="vLLM 0.25.1 is not installed")
    from vllm.v1.attention.backend import AttentionCGSupport
    from vllm.v1.attention.backends.flash_attn import (
        FlashAttentionBackend,
        FlashAttentionImpl,
        FlashAttentionMetadata,
        FlashAttentionMetadataBuilder,
    )
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from delta_attn.vllm import backend

    register()
    assert AttentionBackendEnum.CUSTOM.get_path() == BACKEND_CLASS_PATH
    assert AttentionBackendEnum[backend.DeltaAttentionBackend.get_name()] is AttentionBackendEnum.CUSTOM
    assert issubclass(backend.DeltaAttentionBackend, FlashAttentionBackend)
    assert issubclass(backend.DeltaAttentionBackend.get_impl_cls(), FlashAttentionImpl)
    builder = backend.DeltaAttentionBackend.get_builder_cls()
    assert issubclass(builder, FlashAttentionMetadataBuilder)
    assert builder._cudagraph_support == AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    assert issubclass(backend.DeltaAttentionMetadata, FlashAttentionMetadata)


def _reference_flash_attention_forward(self, layer, query, key, value, kv_cache, meta, output, *args):
    """FlashAttention's varlen call over the paged cache, as the metadata describes it (CPU stand-in)."""
    qsl = meta.query_start_loc.tolist()
    for i in range(len(qsl) - 1):
        lo, hi = qsl[i], qsl[i + 1]
        n_keys = int(meta.seq_lens[i])
        k = paged_prefix(kv_cache[:, 0], meta.block_table[i], n_keys)
        v = paged_prefix(kv_cache[:, 1], meta.block_table[i], n_keys)
        rows = delta_attention(
            query[lo:hi].permute(1, 0, 2)[None], k, v, DeltaConfig(mode="dense", backend="reference"), scale=self.scale
        )
        output[lo:hi] = rows[0].permute(1, 0, 2)
    return output


def test_real_builder_and_impl_split_steps_and_match_one_shot(seed, monkeypatch):
    """The backend's own build (Δ split) and forward, on vLLM's real metadata classes, FlashAttention stood in."""
    fa = pytest.importorskip("vllm.v1.attention.backends.flash_attn", reason="vLLM 0.25.1 is not installed")
    from vllm.v1.attention.backend import AttentionType, CommonAttentionMetadata

    from delta_attn.vllm import backend as vb
    from delta_attn.vllm.settings import VllmDeltaSettings

    monkeypatch.setattr(fa.FlashAttentionImpl, "forward", _reference_flash_attention_forward)
    cfg = CONFIGS["repeat"]
    builder = object.__new__(vb.DeltaAttentionMetadataBuilder)
    builder.delta_settings, builder.device = VllmDeltaSettings(cfg, min_prompt=100), torch.device("cpu")
    impl = object.__new__(vb.DeltaAttentionImpl)
    impl.__dict__.update(
        delta_config=cfg, dense_config=cfg.replace(mode="dense"), carry=PrefillCarry(), _runs_delta=None,
        attn_type=AttentionType.DECODER, sliding_window=(-1, -1), logits_soft_cap=0, alibi_slopes=None, sinks=None,
        kv_cache_dtype="auto", dcp_world_size=1, scale=0.35,
    )  # fmt: skip
    layer = types.SimpleNamespace(layer_name="model.layers.3.self_attn.attn")
    hq, hkv, dim = 4, 2, 8
    prompt, decode_ctx, short = random.randint(200, 300), random.randint(120, 160), random.randint(3, 30)
    cut = random.randint(60, prompt - 20)
    lengths = [decode_ctx + 2, prompt, short]  # request slots: decode, long prompt, short prompt
    cache = FakePagedCache(lengths, hkv, dim)
    q = [torch.randn(n, hq, dim, dtype=torch.float64) for n in lengths]
    k = [torch.randn(n, hkv, dim, dtype=torch.float64) for n in lengths]
    v = [torch.randn(n, hkv, dim, dtype=torch.float64) for n in lengths]
    cache.write(0, range(decode_ctx), k[0][:decode_ctx], v[0][:decode_ctx])
    got = torch.empty_like(q[1])
    steps = [
        [(0, decode_ctx, decode_ctx + 1), (1, 0, cut), (2, 0, short)],
        [(0, decode_ctx + 1, decode_ctx + 2), (1, cut, prompt)],
    ]
    for pieces in steps:
        slots = [r for r, _, _ in pieces]
        qsl = [0]
        for r, lo, hi in pieces:
            cache.write(r, range(lo, hi), k[r][lo:hi], v[r][lo:hi])
            qsl.append(qsl[-1] + hi - lo)
        seq = torch.tensor([hi for _, _, hi in pieces], dtype=torch.int32)
        qsl_t = torch.tensor(qsl, dtype=torch.int32)
        block_table = cache.block_table[slots]
        cm = CommonAttentionMetadata(
            query_start_loc=qsl_t, query_start_loc_cpu=qsl_t, seq_lens=seq, num_reqs=len(pieces),
            num_actual_tokens=qsl[-1], max_query_len=max(hi - lo for _, lo, hi in pieces), max_seq_len=int(seq.max()),
            block_table_tensor=block_table, slot_mapping=torch.zeros(qsl[-1], dtype=torch.long),
            seq_lens_cpu_upper_bound=seq,
        )  # fmt: skip
        base = fa.FlashAttentionMetadata(
            num_actual_tokens=qsl[-1], max_query_len=cm.max_query_len, query_start_loc=qsl_t,
            max_seq_len=cm.max_seq_len, seq_lens=seq, block_table=block_table, slot_mapping=cm.slot_mapping,
            use_cascade=False, common_prefix_len=0, cu_prefix_query_lens=None, prefix_kv_lens=None, suffix_kv_lens=None,
        )  # fmt: skip
        vb.note_step([f"r{r}" for r in slots], [decode_ctx, prompt, short][: len(slots)], qsl_t.diff().tolist())
        meta = builder.with_delta(base, cm)
        assert [d.req_index for d in meta.delta_plan.delta] == [1]
        query = torch.cat([q[r][lo:hi] for r, lo, hi in pieces])
        output = torch.full_like(query, float("nan"))
        impl.forward(layer, query, None, None, cache.kv, meta, output)
        for slot, (r, lo, hi) in enumerate(pieces):
            rows = output[qsl[slot] : qsl[slot + 1]]
            if r == 1:
                got[lo:hi] = rows
            else:
                as4 = lambda t: t.permute(1, 0, 2)[None]
                want = delta_attention(
                    as4(q[r][lo:hi]), as4(k[r][:hi]), as4(v[r][:hi]), DeltaConfig(mode="dense"), scale=0.35
                )[0].permute(1, 0, 2)
                torch.testing.assert_close(rows, want, rtol=1e-10, atol=1e-10)
    as4 = lambda t: t.permute(1, 0, 2)[None]
    one_shot = delta_attention(as4(q[1]), as4(k[1]), as4(v[1]), cfg, scale=0.35)[0].permute(1, 0, 2)
    torch.testing.assert_close(got, one_shot, rtol=1e-10, atol=1e-10)
    assert len(impl.carry) == 0
    # a step the runner did not describe (or described differently) stays entirely on FlashAttention
    vb.note_step(["x"], [prompt], [5])
    assert builder.with_delta(base, cm) is base


def test_runner_hook_notes_request_ids_and_prompt_lengths(monkeypatch):
    runner = pytest.importorskip("vllm.v1.worker.gpu.model_runner", reason="vLLM 0.25.1 is not installed")
    import numpy as np

    from delta_attn.vllm import backend as vb

    batch = types.SimpleNamespace(
        req_ids=["b", "a"], idx_mapping_np=np.array([1, 0]), num_scheduled_tokens=np.array([1, 700])
    )
    monkeypatch.setattr(runner.GPUModelRunner, "prepare_inputs", lambda self, so, bd: batch)
    vb.install_runner_hooks()
    vb.install_runner_hooks()  # idempotent: wrapped once
    fake_self = types.SimpleNamespace(
        req_states=types.SimpleNamespace(prompt_len=types.SimpleNamespace(np=np.array([9000, 40])))
    )
    assert runner.GPUModelRunner.prepare_inputs(fake_self, None, None) is batch
    assert vb.current_step() == vb.StepRequests(("b", "a"), (40, 9000), (1, 700))
    assert not hasattr(runner.GPUModelRunner.prepare_inputs.__wrapped__, "_delta_attn_wrapped")  # not twice


def test_gpu_summary_table_reads_the_parts_records(tmp_path):
    from delta_attn.vllm.report import table

    errors = {"delta_rows_vs_delta_attention": 0.0, "chunked_3_vs_one_shot": 0.004, "gamma1_vs_stock_fa": 0.008}
    (tmp_path / "vllm_layer.json").write_text(json.dumps(errors | {"stock_rows_vs_stock_fa": 0.0, "pass": True}))
    runs = [
        {"backend": "flash", "chunk": "default", "ttft_s": {"131072": 12.0}, "decode_tok_s_batch1_ctx32768": 80.0},
        {
            "backend": "delta",
            "chunk": "default",
            "ttft_s": {"131072": 4.0},
            "decode_tok_s_batch1_ctx32768": 79.0,
            "concurrency": {"ok": True, "wall_s": 4.9, "tokens_per_s": 29466.0, "reps": [7.8, 4.9]},
        },
        {"backend": "flash", "chunk": "one", "error": "timeout after 90 s"},
        {"backend": "delta", "chunk": "one", "ttft_s": {"131072": "skipped: time limit"}},
    ]
    (tmp_path / "vllm_bench.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "vllm_needles.json").write_text(json.dumps({"delta": {"identical": 23, "of": 24}}))
    text = table(tmp_path)
    assert "| 128K | 12.000 | 4.000 | 3.000× | — | skipped: time limit | — |" in text
    assert "| decode_tok_s_batch1_ctx32768 (FA, Δ, Δ ÷ FA) | 80.000 | 79.000 | 0.988× |" in text
    assert "flash one error | timeout after 90 s" in text
    assert "| 16 mixed requests, delta | ok=True | 29466 tok/s | 4.90 s (runs: 7.80, 4.90 s) |" in text
    assert "| chunked_3_vs_one_shot | 0.004 |" in text and "| delta | 23 / 24 |" in text


def test_bench_runs_selects_engines_and_rejects_unknown_names():
    from delta_attn.vllm.check import parse_runs

    assert parse_runs("flash:default, delta:default") == [("flash", "default", True), ("delta", "default", True)]
    assert parse_runs("delta:one") == [("delta", "one", False)]
    with pytest.raises(SystemExit, match="unknown engine 'delta:two'"):
        parse_runs("delta:two")
    with pytest.raises(SystemExit, match="at least one"):
        parse_runs(" , ")
