"""GPU checks and benchmarks of the vLLM backend (``python -m delta_attn.vllm.check PART``; scripts/gpu_vllm.sh).

Parts (each writes ``OUT/vllm_<part>.json`` and prints a few lines; the shell script prints the table):

* ``layer``: one attention layer of the Llama-3-8B shape (32/8 heads, d = 128, bf16) on a real paged cache, through
  the backend's own builder and ``forward`` with vLLM's FlashAttention for the stock rows: a mixed step (a decode,
  a short prompt, a long prompt) against ``delta_attention`` on the same Q/K/V gathered from the cache, against
  stock FlashAttention for the stock rows, γ = 1 against stock FlashAttention, and the long prompt in 3 chunks
  against one chunk.
* ``bench``: ``LLM`` engines on a dummy-weight Llama-3-8B-shape model (one subprocess per engine): time to first
  token at each length for stock FlashAttention and Δ, with vLLM's chunked prefill and with the prompt in one
  chunk; decode tokens/s; 16 concurrent mixed requests (no error, throughput).
* ``needles``: greedy outputs of Qwen2.5-Coder-1.5B (a GGUF de-quantised to safetensors) in vLLM + Δ against the
  project's transformers path (``delta_attn.enable`` + ``generation.generate``) on NIAH prompts, with stock vLLM
  against transformers' dense attention as the control.

``--dry-run`` runs what can run on CPU: the prompt and config preparation, the HF side of ``needles`` on a tiny
random model, and the parts' bookkeeping, without vLLM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config import DeltaConfig
from .report import table

#: Llama-3-8B's shape (dummy weights: speed does not depend on weight values)
LLAMA3_8B = dict(
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=32,
    intermediate_size=14336,
    vocab_size=128256,
    rope_theta=500000.0,
    max_position_embeddings=262144,
    torch_dtype="bfloat16",
)
DELTA_DEFAULTS = {"sink": 128, "window": 2048, "gamma": 64}


def _write(out: Path, name: str, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"vllm_{name}.json").write_text(json.dumps(record, indent=2, default=str))


def _parse_length(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


# ---- part (a): one layer ------------------------------------------------------------------------------------


def layer_check(out: Path, *, prompt: int = 20000, seed: int = 0) -> dict:
    """The backend's rows against the operator and against stock FlashAttention on one layer (CUDA)."""
    import types

    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl, FlashAttentionMetadata

    from ..ops import delta_attention
    from . import backend as vb
    from .paged import paged_prefix
    from .plan import PrefillCarry
    from .settings import VllmDeltaSettings

    dev, dt = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(seed)
    hq, hkv, d, block = 32, 8, 128, 16
    scale = d**-0.5
    decode_ctx, short = 3001, 517
    lengths = [decode_ctx + 1, prompt, short]  # slots: a decode, the long prompt, a short prompt
    need = [math.ceil(n / block) for n in lengths]
    n_blocks = sum(need) + 8
    kv = torch.randn(n_blocks, 2, block, hkv, d, device=dev, dtype=dt, generator=gen)
    order = torch.randperm(n_blocks, device=dev, generator=gen)
    table = torch.zeros(3, max(need) + 1, dtype=torch.int32, device=dev)
    at = 0
    for r, n in enumerate(need):
        table[r, :n] = order[at : at + n].int()
        at += n
    # scores with std 2.5 (not 1): attention concentrated enough that rows differ visibly between methods
    q = [(2.5 * torch.randn(n, hq, d, device=dev, generator=gen)).to(dt) for n in lengths]
    layer = types.SimpleNamespace(
        layer_name="model.layers.5.self_attn.attn",
        _q_scale=torch.ones(1, device=dev),
        _k_scale=torch.ones(1, device=dev),
        _v_scale=torch.ones(1, device=dev),
    )

    def make_impl(cfg: DeltaConfig):
        impl = vb.DeltaAttentionImpl(hq, d, scale, hkv, None, None, "auto")
        impl.delta_settings = VllmDeltaSettings(cfg, min_prompt=4096)
        impl.delta_config, impl.dense_config, impl.carry = cfg, cfg.replace(mode="dense"), PrefillCarry()
        return impl

    def step(impl, pieces, *, stock: bool = False):
        """One vLLM step over (slot, lo, hi) pieces: the builder's split, then forward (or stock FA only)."""
        slots = [s for s, _, _ in pieces]
        qsl = [0]
        for _, lo, hi in pieces:
            qsl.append(qsl[-1] + hi - lo)
        seq = torch.tensor([hi for _, _, hi in pieces], dtype=torch.int32)
        qsl_cpu = torch.tensor(qsl, dtype=torch.int32)
        bt = table[slots]
        n_tok = qsl[-1]
        cm = CommonAttentionMetadata(
            query_start_loc=qsl_cpu.to(dev),
            query_start_loc_cpu=qsl_cpu,
            seq_lens=seq.to(dev),
            num_reqs=len(pieces),
            num_actual_tokens=n_tok,
            max_query_len=max(hi - lo for _, lo, hi in pieces),
            max_seq_len=int(seq.max()),
            block_table_tensor=bt,
            slot_mapping=torch.zeros(n_tok, dtype=torch.long, device=dev),
            seq_lens_cpu_upper_bound=seq,
        )
        base = FlashAttentionMetadata(
            num_actual_tokens=n_tok,
            max_query_len=cm.max_query_len,
            query_start_loc=cm.query_start_loc,
            max_seq_len=cm.max_seq_len,
            seq_lens=cm.seq_lens,
            block_table=bt,
            slot_mapping=cm.slot_mapping,
            use_cascade=False,
            common_prefix_len=0,
            cu_prefix_query_lens=None,
            prefix_kv_lens=None,
            suffix_kv_lens=None,
        )
        vb.note_step(
            [f"slot{s}" for s in slots], [[decode_ctx, prompt, short][s] for s in slots], qsl_cpu.diff().tolist()
        )
        builder = object.__new__(vb.DeltaAttentionMetadataBuilder)
        builder.delta_settings, builder.device = impl.delta_settings, dev
        meta = builder.with_delta(base, cm)
        query = torch.cat([q[s][lo:hi] for s, lo, hi in pieces])
        output = torch.zeros_like(query)
        if stock:
            FlashAttentionImpl.forward(impl, layer, query, None, None, kv, base, output)
        else:
            impl.forward(layer, query, None, None, kv, meta, output)
        torch.cuda.synchronize()
        return {s: output[qsl[i] : qsl[i + 1]] for i, (s, _, _) in enumerate(pieces)}, meta

    def max_err(a, b) -> float:
        """max |a − b| relative to max |b| (attention outputs are small: an absolute bound would prove little)."""
        return float((a.float() - b.float()).abs().max() / b.float().abs().max())

    cfg = DeltaConfig(**DELTA_DEFAULTS)
    mixed = [(0, decode_ctx, decode_ctx + 1), (1, 0, prompt), (2, 0, short)]
    one_shot, meta = step(make_impl(cfg), mixed)
    assert [r.req_index for r in meta.delta_plan.delta] == [1], "the long prompt must take the Δ path"
    stock, _ = step(make_impl(cfg), mixed, stock=True)
    k = paged_prefix(kv[:, 0], table[1], prompt)
    v = paged_prefix(kv[:, 1], table[1], prompt)
    operator = delta_attention(q[1].permute(1, 0, 2)[None], k, v, cfg, scale=scale)[0].permute(1, 0, 2)
    chunks = [0, 7001, 13333, prompt]
    impl = make_impl(cfg)
    chunked = torch.empty_like(q[1])
    for i in range(3):
        pieces = [(0, decode_ctx, decode_ctx + 1), (1, chunks[i], chunks[i + 1])]
        got, _ = step(impl, pieces)
        chunked[chunks[i] : chunks[i + 1]] = got[1]
    cfg1 = DeltaConfig(sink=128, window=2048, gamma=1)
    gamma1, _ = step(make_impl(cfg1), mixed)
    dense_ref = delta_attention(q[1].permute(1, 0, 2)[None], k, v, cfg.replace(mode="dense"), scale=scale)
    dense_ref = dense_ref[0].permute(1, 0, 2)
    sparse = delta_attention(q[1].permute(1, 0, 2)[None], k, v, cfg.replace(mode="sparse"), scale=scale)
    sparse = sparse[0].permute(1, 0, 2)
    record = {
        "shape": {"heads": hq, "kv_heads": hkv, "head_dim": d, "prompt": prompt, "block_size": block},
        "config": DELTA_DEFAULTS,
        "delta_rows_vs_delta_attention": max_err(one_shot[1], operator),
        "chunked_3_vs_one_shot": max_err(chunked, one_shot[1]),
        "gamma1_vs_stock_fa": max_err(gamma1[1], stock[1]),
        "stock_rows_vs_stock_fa": max(max_err(one_shot[s], stock[s]) for s in (0, 2)),
        "delta_vs_stock_fa": max_err(one_shot[1], stock[1]),
        "sparse_vs_stock_fa": max_err(sparse, stock[1]),
        "triton_dense_vs_stock_fa": max_err(dense_ref, stock[1]),
    }
    tol = 2e-2  # bf16 outputs of two kernels that accumulate in fp32 in different orders
    record["tolerance"] = tol
    # the check can fail: sparse-only must be far from stock FlashAttention on the same rows
    record["sparse_is_distinguishable"] = record["sparse_vs_stock_fa"] > 5 * tol
    record["pass"] = record["sparse_is_distinguishable"] and all(
        record[key] <= tol
        for key in (
            "delta_rows_vs_delta_attention",
            "chunked_3_vs_one_shot",
            "gamma1_vs_stock_fa",
            "stock_rows_vs_stock_fa",
        )
    )
    _write(out, "layer", record)
    return record


# ---- part (b): engines ------------------------------------------------------------------------------------------


def make_dummy_model(folder: Path) -> Path:
    """A config-only Llama-3-8B-shape model folder for ``load_format="dummy"`` (no tokenizer: token-id prompts)."""
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    LlamaConfig(**LLAMA3_8B).save_pretrained(folder)
    return folder


def _engine_kwargs(backend: str, model: str, max_len: int, chunk: int | None, delta: dict, compile_: bool) -> dict:
    kwargs = dict(
        model=model,
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        enable_prefix_caching=False,  # every prompt is new: TTFT is the whole prefill
        max_model_len=max_len,
        gpu_memory_utilization=float(os.environ.get("GPU_MEM", "0.80")),  # Δ's temporaries are not in vLLM's profile
        max_num_seqs=32,
        seed=0,
        disable_log_stats=False,  # per-request timestamps (first / last token) for decode tokens/s
    )
    if not compile_:  # start in seconds: no torch.compile; full CUDA graphs for decode batches as before
        kwargs["compilation_config"] = {
            "mode": 0,
            "cudagraph_mode": "FULL_DECODE_ONLY",
            "cudagraph_capture_sizes": [1, 2, 4, 8, 16, 32],
        }
    if chunk:
        kwargs["max_num_batched_tokens"] = chunk
        kwargs["enable_chunked_prefill"] = True
    if backend == "delta":
        kwargs["attention_backend"] = "CUSTOM"
        kwargs["additional_config"] = {"delta": delta}
    else:
        kwargs["attention_backend"] = "FLASH_ATTN"
    return kwargs


def bench_engine(args) -> dict:
    """One engine (run in its own process): TTFT per length, then decode and concurrency when asked."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t_start = time.perf_counter()
    deadline = t_start + args.limit
    lengths = [_parse_length(x) for x in args.lengths.split(",") if x]
    max_len = max(lengths) + 512
    chunk = max_len if args.chunk == "one" else (None if args.chunk == "default" else int(args.chunk))
    delta = json.loads(args.delta)
    kwargs = _engine_kwargs(args.backend, args.model, max_len, chunk, delta, args.compile)
    record: dict = {"backend": args.backend, "chunk": args.chunk, "engine_kwargs": kwargs, "ttft_s": {}}

    def save() -> None:  # after every measurement: a run killed at its time limit keeps what it measured
        if args.result is not None:
            args.result.write_text(json.dumps(record, indent=2, default=str))

    try:
        llm = LLM(**kwargs)
    except Exception as exc:  # say which configuration failed, try the plainest one
        record["engine_error"] = repr(exc)
        kwargs.pop("compilation_config", None)
        kwargs["enforce_eager"] = True
        record["engine_kwargs"] = kwargs
        llm = LLM(**kwargs)
    record["startup_s"] = time.perf_counter() - t_start
    save()
    sched = llm.llm_engine.vllm_config.scheduler_config
    record["max_num_batched_tokens"] = sched.max_num_batched_tokens
    vocab = LLAMA3_8B["vocab_size"]
    gen = torch.Generator().manual_seed(1234)

    def prompt(n: int) -> TokensPrompt:
        return TokensPrompt(prompt_token_ids=torch.randint(1000, vocab - 1000, (n,), generator=gen).tolist())

    def run(prompts, max_tokens: int):
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t0, outs

    t0 = time.perf_counter()
    run([prompt(8192)], 2)  # warm-up: Triton compiles the Δ kernels here (8K > the default min_prompt)
    run([prompt(1024)], 2)
    record["warmup_s"] = time.perf_counter() - t0
    save()
    for n in lengths:
        if time.perf_counter() > deadline - 5:
            record["ttft_s"][str(n)] = "skipped: time limit"
            continue
        elapsed, _ = run([prompt(n)], 1)
        record["ttft_s"][str(n)] = elapsed
        save()
        print(f"[{args.backend} chunk={args.chunk}] TTFT {n}: {elapsed:.3f} s", flush=True)
    if args.decode and time.perf_counter() < deadline - 30:
        for batch, ctx in ((1, 32768), (16, 2048)):
            elapsed, outs = run([prompt(ctx) for _ in range(batch)], 257)
            rates = []
            for o in outs:
                m = getattr(o, "metrics", None)
                if m is not None and getattr(m, "last_token_ts", 0) > getattr(m, "first_token_ts", 0) > 0:
                    rates.append((len(o.outputs[0].token_ids) - 1) / (m.last_token_ts - m.first_token_ts))
            record[f"decode_tok_s_batch{batch}_ctx{ctx}"] = (sum(rates) / len(rates) * batch) if rates else None
            record[f"decode_wall_s_batch{batch}_ctx{ctx}"] = elapsed
            save()
    if args.concurrency:
        # the same 16 mixed requests up to ``--concurrency-reps`` times, each with fresh prompts: a first-run cost
        # (allocation, a new batch shape) shows as rep 1 > the rest; "concurrency" is the fastest rep
        sizes = [32768] * 4 + [1024] * 12
        reps = []
        for _ in range(max(1, args.concurrency_reps)):
            if time.perf_counter() > deadline - 30:
                break
            elapsed, outs = run([prompt(n) for n in sizes], 64)
            ok = len(outs) == 16 and all(len(o.outputs[0].token_ids) == 64 for o in outs)
            reps.append(
                {
                    "requests": 16,
                    "ok": ok,
                    "wall_s": elapsed,
                    "prompt_tokens": sum(sizes),
                    "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
                    "tokens_per_s": (sum(sizes) + 16 * 64) / elapsed,
                }
            )
            best = min(reps, key=lambda r: r["wall_s"])
            record["concurrency"] = dict(best, ok=all(r["ok"] for r in reps), reps=[r["wall_s"] for r in reps])
            save()
    record["total_s"] = time.perf_counter() - t_start
    save()
    return record


def _run_group(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (vLLM's engine-core child holds the
    GPU memory the next engine needs). Returns (exit code or None on timeout, stdout + stderr)."""
    import signal
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # also after a normal exit: no engine process may outlive its run
        except ProcessLookupError:
            pass
        proc.wait()
        log.seek(0)
        return code, log.read()


BENCH_RUNS = ("flash:default", "delta:default", "flash:one", "delta:one")
COLD_START_S = 45.0


def parse_runs(text: str) -> list[tuple[str, str, bool]]:
    """``"flash:default,delta:default"`` → the engines to start, in order, as (backend, chunk, with decode and
    concurrency). The engines with vLLM's default chunking also measure decode and concurrency."""
    runs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item not in BENCH_RUNS:
            raise SystemExit(f"--runs: unknown engine {item!r}; choose from {', '.join(BENCH_RUNS)}")
        backend, chunk = item.split(":")
        runs.append((backend, chunk, chunk == "default"))
    if not runs:
        raise SystemExit(f"--runs: name at least one of {', '.join(BENCH_RUNS)}")
    return runs


def bench(
    out: Path,
    *,
    limit: float,
    lengths: str,
    model_dir: Path,
    delta: dict,
    compile_: bool,
    runs: str = ",".join(BENCH_RUNS),
) -> dict:
    """The engines in ``runs`` (default all four), each in its own process (GPU memory is freed between them),
    within ``limit`` seconds."""
    runs = parse_runs(runs)
    make_dummy_model(model_dir)
    t0 = time.perf_counter()
    # the engines with decode + concurrency do more: they get 3 parts of the time, the others 2
    weights = [3 if extra else 2 for _, _, extra in runs]
    results = []
    for i, (backend, chunk, extra) in enumerate(runs):
        left = limit - (time.perf_counter() - t0)
        # the first engine also pays the machine's cold start (50–52 s on the H100s of 2026-12-06/07): it gets
        # COLD_START_S off the top, then its share of the rest
        cold = min(COLD_START_S, left / 2) if i == 0 else 0.0
        share = cold + (left - cold) * weights[i] / sum(weights[i:])
        if share < 60:
            results.append({"backend": backend, "chunk": chunk, "skipped": f"time limit ({left:.0f} s left)"})
            continue
        path = out / f"vllm_bench_{backend}_{chunk}.json"
        cmd = [
            sys.executable, "-m", "delta_attn.vllm.check", "bench-engine", "--out", str(out), "--backend", backend,
            "--chunk", chunk, "--lengths", lengths, "--model", str(model_dir), "--delta", json.dumps(delta),
            "--limit", str(share - 10), "--result", str(path),
        ]  # fmt: skip
        if extra:
            cmd += ["--decode", "--concurrency"]
        if compile_:
            cmd.append("--compile")
        print("$", " ".join(cmd[2:]), flush=True)
        code, log = _run_group(cmd, share)
        (out / f"vllm_bench_{backend}_{chunk}.log").write_text(log)
        rec = json.loads(path.read_text()) if path.exists() else {"backend": backend, "chunk": chunk}
        if code is None:
            rec["error"] = f"timeout after {share:.0f} s (measurements before it kept)"
        elif code != 0:
            rec["error"] = f"exit {code}"
            rec["tail"] = log[-3000:]
            print(log[-3000:], flush=True)
        results.append(rec)
    record = {"runs": results, "lengths": lengths, "delta": delta}
    _write(out, "bench", record)
    return record


# ---- part (c): needles -----------------------------------------------------------------------------------------

NEEDLE_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "niah_multikey_1@noise")


def needle_prompts(tokenizer, lengths: list[int], per_task: int) -> list:
    """NIAH prompts from the project's RULER generators (haystacks that need no text download)."""
    from ..eval.ruler import PromptBuilder, generate_sample

    builder = PromptBuilder(tokenizer)
    return [generate_sample(builder, t, n, i) for n in lengths for t in NEEDLE_TASKS for i in range(per_task)]


def hf_greedy(model, prompts: list[list[int]], cfg: DeltaConfig | None, max_new: int) -> list[list[int]]:
    """Greedy tokens of the project's transformers path (Δ prefill + dense decode when ``cfg``, else dense)."""
    import delta_attn
    from delta_attn.generation import SamplingParams, generate

    if cfg is not None:
        delta_attn.enable(model, cfg)
    try:
        # one forward (not generate's chunked "auto" for long prompts), the protocol these checks were run with
        res = [generate(model, [p], SamplingParams(max_new_tokens=max_new), chunk_size=None).tokens[0] for p in prompts]
    finally:
        if cfg is not None:
            delta_attn.disable(model)
    return res


def needles(out: Path, *, gguf: Path, workdir: Path, lengths: list[int], per_task: int, limit: float) -> dict:
    """vLLM + Δ vs the transformers path on the same prompts, greedy, same Δ settings; stock vs dense as control."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    folder = workdir / "qwen-st"
    if not (folder / "config.json").exists():
        from ..models import load_cpu_model

        # the project's loader: de-quantised weights, no GGUF quantizer left (save_pretrained refuses a model that
        # transformers still believes is GGUF-quantised), from its cache when the eval already built it
        model, tok = load_cpu_model(gguf)
        model.config.architectures = [type(model).__name__]  # a GGUF config has none; vLLM picks its class by it
        model.to(torch.bfloat16).save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
    tok = AutoTokenizer.from_pretrained(folder)
    samples = needle_prompts(tok, lengths, per_task)
    prompts = [s.input_ids for s in samples]
    max_new = 16
    cfg = DeltaConfig(**DELTA_DEFAULTS)
    record: dict = {"prompts": len(prompts), "lengths": lengths, "tasks": NEEDLE_TASKS, "max_new_tokens": max_new}
    record["prepare_s"] = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16).cuda().eval()
    hf = {"delta": hf_greedy(model, prompts, cfg, max_new), "dense": hf_greedy(model, prompts, None, max_new)}
    del model
    torch.cuda.empty_cache()
    record["hf_s"] = time.perf_counter() - t0 - record["prepare_s"]
    vl = {}
    (out / "vllm_needle_prompts.json").write_text(json.dumps(prompts))
    for backend in ("delta", "flash"):
        left = limit - (time.perf_counter() - t0)
        path = out / f"vllm_needles_{backend}.json"
        cmd = [
            sys.executable, "-m", "delta_attn.vllm.check", "needles-engine", "--backend", backend, "--model",
            str(folder), "--prompts", str(out / "vllm_needle_prompts.json"), "--result", str(path),
            "--delta", json.dumps(DELTA_DEFAULTS | {"min_prompt": 4096}), "--max-new", str(max_new),
        ]  # fmt: skip
        code, log = _run_group(cmd, max(60, left / 2))
        (out / f"vllm_needles_{backend}.log").write_text(log)
        vl[backend] = json.loads(path.read_text()) if code == 0 and path.exists() else None
    pairs = {"delta": ("delta", "delta"), "control": ("flash", "dense")}
    for name, (v_key, h_key) in pairs.items():
        got = vl[v_key]
        if got is None:
            record[name] = {"error": f"vLLM {v_key} run failed (see vllm_needles_{v_key}.log)"}
            continue
        same = [a == b for a, b in zip(got, hf[h_key])]
        record[name] = {"identical": sum(same), "of": len(same), "differ_at": [i for i, s in enumerate(same) if not s]}
    answers = [s.answers for s in samples]
    record["hf_delta_text"] = [tok.decode(t) for t in hf["delta"]]
    record["answers"] = answers
    record["total_s"] = time.perf_counter() - t0
    _write(out, "needles", record)
    return record


def needles_engine(args) -> list[list[int]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.loads(Path(args.prompts).read_text())
    kwargs = dict(
        model=args.model,
        skip_tokenizer_init=True,  # token-id prompts, token-id outputs: both sides compare ids
        dtype="bfloat16",
        enable_prefix_caching=False,
        max_model_len=max(len(p) for p in prompts) + args.max_new + 16,
        gpu_memory_utilization=0.6,
        seed=0,
        compilation_config={"mode": 0, "cudagraph_mode": "FULL_DECODE_ONLY", "cudagraph_capture_sizes": [1, 2, 4, 8]},
    )
    if args.backend == "delta":
        kwargs |= {"attention_backend": "CUSTOM", "additional_config": {"delta": json.loads(args.delta)}}
    else:
        kwargs["attention_backend"] = "FLASH_ATTN"
    llm = LLM(**kwargs)
    params = SamplingParams(max_tokens=args.max_new, temperature=0.0, ignore_eos=True, detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


# ---- dry run and entry point -----------------------------------------------------------------------------------


def dry_run(out: Path) -> dict:
    """What runs on CPU: engine arguments, the dummy model folder, needle prompts and the HF side on a tiny model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..models import load_cpu_model

    record: dict = {}
    for backend in ("delta", "flash"):
        for chunk in (None, 131584):
            _engine_kwargs(backend, "/tmp/x", 131584, chunk, DELTA_DEFAULTS, False)
    folder = make_dummy_model(out / "dummy-llama3-8b")
    record["dummy_config"] = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    _, tok = load_cpu_model()  # the bundled SmolLM2's tokenizer
    samples = needle_prompts(tok, [1024], 1)
    record["needle_prompts"] = [len(s.input_ids) for s in samples]
    tiny = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=128,
            vocab_size=len(tok) + 64, max_position_embeddings=2048,
        )
    ).eval()  # fmt: skip
    cfg = DeltaConfig(sink=8, window=64, gamma=16)
    prompts = [s.input_ids for s in samples]
    delta_tokens = hf_greedy(tiny, prompts, cfg, 4)
    dense_tokens = hf_greedy(tiny, prompts, None, 4)
    record["hf_tokens"] = [len(t) for t in delta_tokens + dense_tokens]
    _write(out, "dry_run", record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m delta_attn.vllm.check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "part", choices=("layer", "bench", "needles", "bench-engine", "needles-engine", "dry-run", "table")
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    parser.add_argument("--limit", type=float, default=300.0, help="seconds for this part")
    parser.add_argument("--lengths", default="32K,128K")
    parser.add_argument("--model", default="/tmp/vllm-dummy-llama3-8b")
    parser.add_argument("--gguf", type=Path, default=Path("/tmp/m/model.gguf"))
    parser.add_argument("--delta", default=json.dumps(DELTA_DEFAULTS))
    parser.add_argument("--backend", choices=("delta", "flash"), default="delta")
    parser.add_argument("--chunk", default="default", help="'default' (vLLM's), 'one' (whole prompt) or a token count")
    parser.add_argument(
        "--runs",
        default=",".join(BENCH_RUNS),
        help="bench: the engines to start, in order (default all four: %(default)s)",
    )
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--concurrency", action="store_true")
    parser.add_argument(
        "--concurrency-reps", type=int, default=2, help="times the concurrency test runs (fastest reported)"
    )
    parser.add_argument("--compile", action="store_true", help="vLLM's default torch.compile + CUDA graphs")
    parser.add_argument("--result", type=Path)
    parser.add_argument("--prompts")
    parser.add_argument("--max-new", type=int, default=16)
    parser.add_argument("--per-task", type=int, default=3)
    parser.add_argument("--needle-lengths", default="16K,32K")
    args = parser.parse_args(argv)
    if args.part == "table":
        print(table(args.out))
    elif args.part == "dry-run":
        print(json.dumps(dry_run(args.out), indent=1))
    elif args.part == "layer":
        print(json.dumps(layer_check(args.out), indent=1))
    elif args.part == "bench":
        delta = json.loads(args.delta)
        print(
            json.dumps(
                bench(
                    args.out,
                    limit=args.limit,
                    lengths=args.lengths,
                    model_dir=Path(args.model),
                    delta=delta,
                    compile_=args.compile,
                    runs=args.runs,
                ),
                indent=1,
            )
        )  # noqa: E501
    elif args.part == "bench-engine":
        bench_engine(args)  # writes args.result after every measurement
    elif args.part == "needles":
        lengths = [_parse_length(x) for x in args.needle_lengths.split(",")]
        rec = needles(
            args.out, gguf=args.gguf, workdir=Path("/tmp"), lengths=lengths, per_task=args.per_task, limit=args.limit
        )  # noqa: E501
        print(json.dumps({k: v for k, v in rec.items() if k not in ("hf_delta_text", "answers")}, indent=1))
    elif args.part == "needles-engine":
        args.result.write_text(json.dumps(needles_engine(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
