"""The Δ attention backend for vLLM 0.25.1 (imports vLLM; registered as ``AttentionBackendEnum.CUSTOM``).

It is vLLM's FlashAttention backend with one change: the prompt rows of long prompts run Δ attention.

* :class:`DeltaAttentionMetadataBuilder` builds FlashAttention's metadata as usual, then splits the step's
  batch (:func:`delta_attn.vllm.plan.plan_batch`): decode tokens and short prompts stay on FlashAttention
  (their own varlen metadata, sliced or gathered out of the batch), prompt rows of prompts with at least
  ``min_prompt`` tokens take the Δ path. A batch without Δ rows keeps FlashAttention's metadata untouched.
* :class:`DeltaAttentionImpl` runs FlashAttention's own ``forward`` on the stock rows and, for each Δ chunk,
  :func:`delta_attn.vllm.paged.paged_delta_rows` over the paged KV cache with the chunk's absolute positions,
  the whole prompt's length and the layer's carried state (:class:`delta_attn.vllm.plan.PrefillCarry`).

The builder needs each request's **prompt length** (the exact tail is placed from it, and only the chunk
reaching it computes the tail) and its **request id** (the key of the carried state).
``CommonAttentionMetadata`` has neither in 0.25.1, so the builder wraps, once per worker process, the model
runner method that prepares the batch — ``GPUModelRunner.prepare_inputs`` of model runner V2 (the default for
dense models) and ``GPUModelRunner._build_attention_metadata`` of the V1 runner — to note the step's request
ids, prompt lengths and query lengths (:class:`StepRequests`). The builder uses them only when they match the
batch it is given; otherwise every row runs FlashAttention (exact) and one warning says so.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

import torch
from vllm.config import get_current_vllm_config_or_none
from vllm.logger import init_logger
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadata,
    FlashAttentionMetadataBuilder,
)

from .paged import run_delta_rows
from .plan import BatchPlan, DenseBatch, PrefillCarry, dense_batch, plan_batch
from .settings import VllmDeltaSettings, parse_settings

# vLLM's logger tree: its handler and format (a plain "delta_attn" logger would print nothing below WARNING)
logger = init_logger("vllm.delta_attn")


# ---- what the model runner knows and the attention metadata does not ------------------------------------


@dataclass(frozen=True)
class StepRequests:
    """The requests of the step being prepared, in batch order (noted by the wrapped model-runner method)."""

    req_ids: tuple[str, ...]
    prompt_lens: tuple[int, ...]
    query_lens: tuple[int, ...] | None  # None when the runner did not tell (then not checked)


_step: StepRequests | None = None


def note_step(req_ids, prompt_lens, query_lens=None) -> None:
    """Record the step's requests (called by the wrapped runner method; public for tests and other runners)."""
    global _step
    _step = StepRequests(
        tuple(str(r) for r in req_ids),
        tuple(int(p) for p in prompt_lens),
        None if query_lens is None else tuple(int(q) for q in query_lens),
    )


def current_step() -> StepRequests | None:
    return _step


def _wrap_once(cls, name: str, make):
    method = getattr(cls, name)
    if getattr(method, "_delta_attn_wrapped", False):
        return
    wrapped = functools.wraps(method)(make(method))
    wrapped._delta_attn_wrapped = True
    setattr(cls, name, wrapped)


def install_runner_hooks() -> None:
    """Wrap the model runners' batch preparation to note request ids and prompt lengths (idempotent)."""
    try:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as RunnerV2
    except Exception as exc:  # pragma: no cover - present in 0.25.1; never stop the engine over it
        logger.warning("delta_attn: model runner V2 not importable (%r); its steps run stock FlashAttention", exc)
    else:

        def make_v2(prepare_inputs):
            def wrapper(self, scheduler_output, batch_desc):
                batch = prepare_inputs(self, scheduler_output, batch_desc)
                try:
                    prompt_lens = self.req_states.prompt_len.np[batch.idx_mapping_np]
                    note_step(batch.req_ids, prompt_lens.tolist(), batch.num_scheduled_tokens.tolist())
                except Exception as exc:  # a changed runner: run stock FlashAttention, say why once
                    _forget_step(f"model runner V2 batch has no prompt lengths ({exc!r})")
                return batch

            return wrapper

        _wrap_once(RunnerV2, "prepare_inputs", make_v2)
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner as RunnerV1
    except Exception as exc:  # pragma: no cover
        logger.warning("delta_attn: model runner V1 not importable (%r); its steps run stock FlashAttention", exc)
    else:

        def make_v1(build_attention_metadata):
            def wrapper(self, num_tokens, num_reqs, max_query_len, *args, **kwargs):
                try:
                    batch = self.input_batch
                    qsl = self.query_start_loc.np[: num_reqs + 1]
                    note_step(
                        batch.req_ids[:num_reqs],
                        batch.num_prompt_tokens[:num_reqs].tolist(),
                        (qsl[1:] - qsl[:-1]).tolist(),
                    )
                except Exception as exc:
                    _forget_step(f"model runner V1 batch has no prompt lengths ({exc!r})")
                return build_attention_metadata(self, num_tokens, num_reqs, max_query_len, *args, **kwargs)

            return wrapper

        _wrap_once(RunnerV1, "_build_attention_metadata", make_v1)


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _forget_step(reason: str) -> None:
    global _step
    _step = None
    _warn_once(reason, "delta_attn: %s; those steps run stock FlashAttention", reason)


# ---- settings --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _settings_from_json(key: str) -> VllmDeltaSettings:
    import json

    return parse_settings(json.loads(key))


def current_settings(vllm_config=None) -> VllmDeltaSettings:
    """The settings in ``VllmConfig.additional_config["delta"]`` of ``vllm_config`` (default: the current one)."""
    import json

    vllm_config = vllm_config if vllm_config is not None else get_current_vllm_config_or_none()
    extra = getattr(vllm_config, "additional_config", None) or {}
    return _settings_from_json(json.dumps(dict(extra), sort_keys=True, default=str))


# ---- backend, metadata, builder, impl ----------------------------------------------------------------------


@dataclass
class DeltaAttentionMetadata(FlashAttentionMetadata):
    """FlashAttention's metadata of the whole step, plus the Δ split (None: every row runs FlashAttention).

    dense_metadata: FlashAttention metadata of the stock rows only (None when there are none).
    dense_rows:     where those rows sit in the batch (:class:`~delta_attn.vllm.plan.DenseBatch`).
    dense_token_index: the batch tokens of the stock rows on the device, when they are not one contiguous run.
    """

    delta_plan: BatchPlan | None = None
    dense_metadata: FlashAttentionMetadata | None = None
    dense_rows: DenseBatch | None = None
    dense_token_index: torch.Tensor | None = None


class DeltaAttentionMetadataBuilder(FlashAttentionMetadataBuilder):
    # Full CUDA graphs only for pure decode batches: a graph replay would skip the Δ rows' Python, so batches
    # with prefill rows run the attention eagerly (piecewise graphs around it).
    _cudagraph_support = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    # the stock rows' metadata holds a gathered copy of the block table
    supports_update_block_table = False

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.delta_settings = current_settings(vllm_config)
        install_runner_hooks()
        logger.info("delta_attn: vLLM attention backend CUSTOM = Δ prefill (%s)", self.delta_settings.describe())

    def use_cascade_attention(self, *args, **kwargs) -> bool:
        return False  # cascade attention shares a prefix across requests; the Δ rows need their own prefix

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> FlashAttentionMetadata:
        base = super().build(common_prefix_len, common_attn_metadata, fast_build)
        return self.with_delta(base, common_attn_metadata)

    def with_delta(self, base: FlashAttentionMetadata, cm: CommonAttentionMetadata) -> FlashAttentionMetadata:
        """FlashAttention's metadata ``base`` of the step plus its Δ split (uses ``delta_settings`` and ``device``).

        A step without Δ rows (every decode step) gets ``base`` itself: the stock path, not even a copy.
        """
        plan = self._plan(cm, base)
        if plan is None or not plan.has_delta:
            return base
        meta = DeltaAttentionMetadata(
            **{f.name: getattr(base, f.name) for f in dataclasses.fields(FlashAttentionMetadata)}
        )
        meta.delta_plan = plan
        rows = dense_batch(plan.dense)
        if rows is None:
            return meta
        dev = self.device
        req_index = torch.tensor(rows.req_index, dtype=torch.long).to(dev, non_blocking=True)
        meta.dense_rows = rows
        meta.dense_metadata = dataclasses.replace(
            base,
            num_actual_tokens=rows.n_tokens,
            max_query_len=rows.max_query_len,
            query_start_loc=torch.tensor(rows.cu_seqlens_q, dtype=torch.int32).to(dev, non_blocking=True),
            seq_lens=base.seq_lens.index_select(0, req_index),
            block_table=base.block_table.index_select(0, req_index),
            use_cascade=False,
            common_prefix_len=0,
            cu_prefix_query_lens=None,
            prefix_kv_lens=None,
            suffix_kv_lens=None,
            scheduler_metadata=None,  # FlashAttention schedules this sub-batch itself
            prefix_scheduler_metadata=None,
            max_num_splits=0,
        )
        if rows.token_index is not None:
            meta.dense_token_index = torch.tensor(rows.token_index, dtype=torch.long).to(dev, non_blocking=True)
        return meta

    def _plan(self, cm: CommonAttentionMetadata, base: FlashAttentionMetadata) -> BatchPlan | None:
        if base.use_cascade or base.dcp_context_kv_lens is not None:
            return None
        if base.mm_prefix_range_tensor is not None or base.rswa_prefix_lens is not None:
            _warn_once("mask", "delta_attn: models with multimodal prefix or R-SWA masks run stock FlashAttention")
            return None
        if isinstance(cm.causal, torch.Tensor) or cm.causal is not True:
            return None
        if cm.max_query_len <= 1:  # decode-only step (also every CUDA-graph capture)
            return None
        step = current_step()
        if step is None or cm.seq_lens_cpu_upper_bound is None:
            _warn_once(
                "no-step",
                "delta_attn: a prefill step came without request ids and prompt lengths from the model runner; "
                "it runs stock FlashAttention",
            )
            return None
        n_req = cm.num_reqs
        qsl = cm.query_start_loc_cpu[: n_req + 1].tolist()
        known = len(step.req_ids)
        query_lens = [qsl[r + 1] - qsl[r] for r in range(n_req)]
        matches = known <= n_req and all(q == 0 for q in query_lens[known:])
        if matches and step.query_lens is not None:
            matches = tuple(query_lens[:known]) == step.query_lens
        if not matches:
            _warn_once(
                "mismatch",
                "delta_attn: the model runner's request list does not match the attention batch "
                "(%d requests noted, %d in the batch); such steps run stock FlashAttention",
                known,
                n_req,
            )
            return None
        seq_lens = cm.seq_lens_cpu_upper_bound[:n_req].tolist()
        return plan_batch(qsl, seq_lens, step.prompt_lens, step.req_ids, self.delta_settings.min_prompt)


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


class DeltaAttentionImpl(FlashAttentionImpl):
    """FlashAttention for the stock rows, Δ over the paged cache for the prompt rows of long prompts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delta_settings = current_settings()
        self.delta_config = self.delta_settings.config
        self.dense_config = self.delta_config.replace(mode="dense")
        self.carry = PrefillCarry()
        self._runs_delta: bool | None = None  # decided on the first forward (needs the layer's name)

    def _layer_runs_delta(self, layer) -> bool:
        if self._runs_delta is None:
            name = getattr(layer, "layer_name", "")
            match = _LAYER_INDEX.search(f".{name}.")
            index = int(match.group(1)) if match else None
            reason = None
            if self.attn_type != AttentionType.DECODER:
                reason = f"attention type {self.attn_type}"
            elif self.delta_config.is_dense_layer(index):
                reason = "listed in dense_layers"
            elif tuple(self.sliding_window) != (-1, -1):
                reason = f"sliding window {self.sliding_window}"
            elif self.logits_soft_cap:
                reason = "logit soft-capping"
            elif self.alibi_slopes is not None or self.sinks is not None:
                reason = "ALiBi slopes or attention sinks"
            elif self.kv_cache_dtype not in ("auto", "bfloat16", "float16"):
                reason = f"KV cache dtype {self.kv_cache_dtype}"
            elif self.dcp_world_size > 1:
                reason = "decode context parallelism"
            self._runs_delta = reason is None
            if reason is not None:
                logger.info("delta_attn: layer %s runs stock FlashAttention (%s)", name, reason)
        return self._runs_delta

    def forward(
        self,
        layer: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: FlashAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        plan = getattr(attn_metadata, "delta_plan", None)
        if plan is None or output_scale is not None or not self._layer_runs_delta(layer):
            return super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
            )
        meta: DeltaAttentionMetadata = attn_metadata  # type: ignore[assignment]
        if meta.dense_metadata is not None:
            rows = meta.dense_rows
            if rows.token_range is not None:
                lo, hi = rows.token_range
                super().forward(layer, query[lo:hi], key, value, kv_cache, meta.dense_metadata, output[lo:hi])
            else:
                index = meta.dense_token_index
                sub_out = output.new_empty((index.numel(),) + tuple(output.shape[1:]))
                super().forward(layer, query.index_select(0, index), key, value, kv_cache, meta.dense_metadata, sub_out)
                output.index_copy_(0, index, sub_out)
        key_cache, value_cache = kv_cache.unbind(1)
        run_delta_rows(
            plan.delta,
            query,
            output,
            key_cache,
            value_cache,
            meta.block_table,
            self.carry,
            self.delta_config,
            scale=self.scale,
            dense_config=self.dense_config,
            layer=getattr(layer, "layer_name", ""),
        )
        return output


class DeltaAttentionBackend(FlashAttentionBackend):
    """vLLM's FlashAttention backend with Δ prefill for long prompts (select with ``attention_backend="CUSTOM"``)."""

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"  # vLLM maps the name back to its AttentionBackendEnum member

    @staticmethod
    def get_impl_cls() -> type[DeltaAttentionImpl]:
        return DeltaAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[DeltaAttentionMetadataBuilder]:
        return DeltaAttentionMetadataBuilder
