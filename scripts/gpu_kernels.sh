#!/usr/bin/env bash
# Issue 16 (kernels) in ONE device call of at most LIMIT seconds (default 470 = under 8 minutes): every part under
# `timeout`, logs and JSON under $OUT, a short table printed last. Each part's cap comes from BENCHMARKS.md's H200
# numbers and the issue's H100 numbers (estimates in brackets); a part that overruns is cut, the others still run.
#
#   (a) checks   [~60 s]  the Triton backend against the float64 oracle (bench/check.py rule: kernel error <= 2x
#                         PyTorch's own error): λ fused (float, auto: anchor-row Õ pass), strided K/V through host
#                         4-D TMA descriptors (chunked views of a longer buffer, a model's transposed layout), GQA
#                         1:1..8:1, head dims 64/80/128, batch 2, lengths off the tile and γ, plus the kernel units
#   (b) layer    [~110 s] one Llama-3-8B layer (32/8 heads, d 128, bf16, sink 128 + window 2048, γ 64) at 128K and
#                         1M: cuDNN, sparse-only, Δ (contiguous K/V; +strided: views of a cache buffer, new host
#                         descriptors; +devtma: the old per-program descriptors; +hf: a model's layout), λ = auto,
#                         λ = 0.5, the dense-rows kernel alone with the old split (rows) and others (ips<k>: work
#                         items per SM, chunk<keys>: key-chunk cap). Warm-up at 3000 tokens first, so each length's
#                         first call is "a never-seen length after a warm-up": reported as first ÷ steady
#   (c) first    [~25 s]  compiled-kernel counts (Triton's own caches) and first-call ÷ steady at 5 fresh lengths
#                         after a warm-up at another, Δ and λ = auto, Llama-3-8B layer shape
#   (d) e2e      [~150 s] `delta-attn bench e2e --model-shape llama-3.2-1b` (random weights): dense and Δ one-shot at
#                         32K/64K/128K, Δ chunked (16384) at 128K into PreallocatedCache and into DynamicCache,
#                         2 reps each (first call = never-seen length); then Δ chunked into PreallocatedCache at 1M
#                         (DynamicCache would copy the cache at every chunk: ~1 TB moved at 1M), dense at 1M
#                         extrapolated from an N² fit of the measured dense times (labelled so, with the SDPA
#                         backend each dense point ran on: the fastest at its length); both runs merged by
#                         `bench e2e-report` into $OUT/e2e_all (one log-log plot 32K → 1M with the fit and Δ's floor)
#
#   DRY=1 scripts/gpu_kernels.sh   CPU dry run: (a) and (c) through Triton's interpreter at tiny sizes plus every kernel
#                                  variant compiled for sm_90 (bench/sm90_report.py), (b) checks the method names only,
#                                  (d) the tiny model on CPU; the same summary code at the end
#
#   (p) profile [~20 s]  (only when named in PARTS) kernel-by-kernel device time of Δ and λ = auto at 128K
#                         (python -m delta_attn.bench.profile): where λ = auto's extra time goes
#
# Environment: OUT (default ./out), LIMIT (seconds, default 470), PY (default python3), PARTS (default
# "checks layer first e2e"; add "profile"), CHECKS (comma-separated case names, default the list below).
# (d) end to end: SHAPE (default llama-3.2-1b) or MODEL (a real model: name, .gguf or HF folder; positions
# past its context are timing only), L1 (one-shot dense + Δ lengths, default 32K,64K,128K; empty: none), CH_AT
# (where Δ also runs chunked, default 128K), L2 (Δ-only lengths, default 1M) with L2_CHUNKS (default 16384;
# "0,16384" times one-shot beside chunked), PROFILE_AT (a length: after the L1 cells, one profiled prefill per
# method there, device time by kernel category: where a whole forward's time goes, e.g. the 8B shape's gap to
# its attention-free ceiling). PYTHONPATH=src (the package is not installed on the GPU machine).
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-./out}
LIMIT=${LIMIT:-470}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_kernels.log") 2>&1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
DRY=${DRY:-0}

left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
# cap CAP RESERVE: the part's timeout: at most CAP seconds, and never into the RESERVE kept for the parts after it
cap() { local l; l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 5 ] && l=5; echo "$l"; }
part() { echo; echo "== $1 (t = $(( $(date +%s) - T0 )) s, $(left) s left)"; }

PARTS=" ${PARTS:-checks layer first e2e} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
# seconds kept for the wanted parts after $1 (each part's usual cap): a part never eats its successors' time, and
# parts left out of PARTS reserve nothing (a fixed reserve cut the checks to 5 s in a short call, 2026-12-06)
after() {
  local s=0 seen=0 p
  for p in checks:90 layer:180 profile:60 first:45 e2e:190; do
    [ "$seen" = 1 ] && want "${p%%:*}" && s=$((s + ${p##*:}))
    [ "${p%%:*}" = "$1" ] && seen=1
  done
  echo "$s"
}

METHODS="cudnn,sparse,delta,delta+strided,delta+devtma,delta+hf,delta_auto,delta_l0.5,rows,rows+ips8,rows+ips16,rows+chunk16384,rows+bn128"
DEFAULT_CHECKS="delta-stream-g4,delta-stream-big,delta-d64-b2-mha,delta-d80-g8,delta-g3-d128,delta-gamma48-unfused,dense-g4"
DEFAULT_CHECKS+=",chunk-repeat,chunk-gqa-strided,prompt-longer,fp32-delta,delta-topk,delta-vs,delta-scale0.5,delta-auto"
DEFAULT_CHECKS+=",delta-auto-global,chunk-auto,chunk-scale0.3-gqa,delta-auto-d80-g8,delta-auto-b2-gqa,delta-auto-block"
DEFAULT_CHECKS+=",delta-auto-topk,chunk-auto-gqa,delta-hf-layout,chunk-hf-layout-auto,unit"
CHECKS=${CHECKS:-$DEFAULT_CHECKS}

if [ "$DRY" = 1 ]; then
  echo "DRY=1: CPU dry run (Triton interpreter, tiny sizes)"
else
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device here: run DRY=1 $0 for the CPU dry run"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# ---- (a) correctness ---------------------------------------------------------------------------------------
if want checks; then
part "(a) kernel checks vs the float64 oracle"
if [ "$DRY" = 1 ]; then
  TRITON_INTERPRET=1 timeout "$(cap 300 200)" $PY -m delta_attn.bench.check --tiny --json \
    --cases delta-stream-g4,chunk-gqa-strided,delta-auto-b2-gqa,chunk-scale0.3-gqa,delta-hf-layout \
    > "$OUT/checks_tiny.json"
  echo "exit $? ($(grep -o '"ok": true' "$OUT/checks_tiny.json" | wc -l) passed)"
  # every kernel variant the GPU run launches, compiled for sm_90 with Triton's ptxas (compile errors, spills)
  timeout "$(cap 600 100)" $PY -m delta_attn.bench.sm90_report --modes delta,sparse --variants strided,hf,devtma,auto,lam,bn128 \
    > "$OUT/sm90_report.log" 2>&1
  echo "sm_90 compile: exit $?"; cat "$OUT/sm90_report.log" | cut -c1-160
else
  timeout "$(cap 90 "$(after checks)")" $PY -m delta_attn.bench.check --workers 8 --cases "$CHECKS" --out "$OUT/checks" \
    > "$OUT/checks.log" 2>&1
  echo "exit $?"; tail -n 3 "$OUT/checks.log"
fi

fi

# ---- (b) one layer -----------------------------------------------------------------------------------------
if want layer; then
part "(b) one Llama-3-8B layer at 128K and 1M"
if [ "$DRY" = 1 ]; then
  $PY - "$METHODS" <<'PY'
import sys
from delta_attn import DeltaConfig
from delta_attn.bench.layer import method_config, modified_configs, split_method
import torch
for m in sys.argv[1].split(","):
    method_config(m, DeltaConfig())
    modified_configs(split_method(m)[1], torch.bfloat16, None)
print("method names ok:", sys.argv[1])
PY
else
  timeout "$(cap 190 "$(after layer)")" $PY -m delta_attn.cli bench layer --lengths 128K,1M --methods "$METHODS" \
    --dense-once-above 256K --budget 0.4 --reps 5 --warmup-length 3000 --out "$OUT/layer" > "$OUT/layer.log" 2>&1
  echo "exit $?"; grep -E "warm-up|  (128K|1M) " "$OUT/layer.log" | head -40
fi

fi

# ---- (p) profile -------------------------------------------------------------------------------------------
if want profile; then
part "(p) kernel-by-kernel profile of Δ and λ = auto"
if [ "$DRY" = 1 ]; then
  TRITON_INTERPRET=1 timeout "$(cap 120 60)" $PY -m delta_attn.bench.profile --device cpu --length 300 --heads 4,2 \
    --head-dim 32 --reps 1 --top 6 --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
else
  timeout "$(cap 60 "$(after profile)")" $PY -m delta_attn.bench.profile --length 128K --methods delta,delta_auto,delta_autod,sparse \
    --anchor-tiles 128:8,64:4,64:8,32:4 \
    --reps 5 --top 10 --out "$OUT/profile.json" > "$OUT/profile.log" 2>&1
fi
echo "exit $?"; grep -v "^USDT\|^STAGE" "$OUT/profile.log" | tail -50
fi

# ---- (c) no per-length cost --------------------------------------------------------------------------------
if want first; then
part "(c) first call at never-seen lengths after a warm-up at another"
TC=$(cap 45 "$(after first)"); [ "$DRY" = 1 ] && TC=600  # the interpreter is slow
timeout "$TC" env DRY="$DRY" $( [ "$DRY" = 1 ] && echo TRITON_INTERPRET=1 ) $PY - "$OUT/first_call.json" <<'PY'
import json, os, sys, time
import torch
from delta_attn import DeltaConfig
from delta_attn.kernels import triton_prefill
from delta_attn.kernels import anchor_sparse as asp, dense_rows as dr, sparse as sp

dry = os.environ.get("DRY") == "1"
dev = "cpu" if dry else "cuda"
kernels = {"dense_rows": dr._dense_rows_kernel, "merge": dr._merge_kernel, "sparse": sp._sparse_kernel,
           "anchor_sparse": asp._anchor_sparse_kernel}
if dry:  # compile keys computed with Triton's binder (no GPU: nothing is compiled)
    from delta_attn.kernels.interpret import record_specialisations
    seen = record_specialisations(kernels)
    count = lambda: {k: len(v) for k, v in seen.items()}  # noqa: E731
    hq, hkv, d, warm, lengths, cfg0 = 4, 2, 32, 200, [251, 333], DeltaConfig(sink=4, window=6, gamma=8, tail=8)
    tiles = __import__("delta_attn.bench.check", fromlist=["TINY_TILES"]).TINY_TILES
else:  # the compiled kernels in Triton's own per-device caches
    def count():
        out = {}
        for k, f in kernels.items():
            caches = getattr(f, "device_caches", {})
            out[k] = sum(len(c[0]) for c in caches.values())
        return out
    hq, hkv, d, warm, lengths, cfg0, tiles = 32, 8, 128, 3000, [50001, 77777, 100003, 131089, 262147], DeltaConfig(), None
sync = (lambda: None) if dry else torch.cuda.synchronize
rows = []
for label, cfg in (("delta", cfg0), ("delta_auto", cfg0.replace(delta_scale="auto"))):
    def call(n):
        g = torch.Generator(device=dev).manual_seed(n)
        q = torch.randn(1, hq, n, d, device=dev, dtype=torch.float32 if dry else torch.bfloat16, generator=g)
        k = torch.randn(1, hkv, n, d, device=dev, dtype=q.dtype, generator=g)
        v = torch.randn(1, hkv, n, d, device=dev, dtype=q.dtype, generator=g)
        def run():
            sync(); t0 = time.perf_counter()
            triton_prefill(q, k, v, cfg, scale=d**-0.5, prompt_len=n, kernel_configs=tiles)
            sync(); return time.perf_counter() - t0
        return run
    call(warm)()
    before = count()
    for n in lengths:
        run = call(n)
        first = run()
        steady = min(run() for _ in range(1 if dry else 3))
        rows.append(dict(method=label, n=n, first_ms=first * 1e3, steady_ms=steady * 1e3, first_vs_steady=first / steady,
                         compiled_before=before, compiled_after=count()))
        print(f"  {label:10s} N={n:7d} first {first*1e3:9.2f} ms  steady {steady*1e3:9.2f} ms  "
              f"first/steady {first/steady:5.2f}  kernels {count()}", flush=True)
grew = {r["method"]: r["compiled_after"] != r["compiled_before"] for r in rows}
print("new compilations after the warm-up:", grew)
json.dump(dict(rows=rows, warmup_length=warm, grew=grew), open(sys.argv[1], "w"), indent=1)
PY
echo "exit $?"

fi

# ---- (d) end to end ----------------------------------------------------------------------------------------
if want e2e; then
if [ "$DRY" = 1 ]; then
  E2E=(--device cpu --model-shape tiny --window 32 --sink 4 --gamma 16 --warmup-length 64)
  L1=${L1-256,512}; CH=64; CH_AT=${CH_AT:-512}; L2=${L2-1024}
else
  if [ -n "${MODEL:-}" ]; then E2E=(--device cuda --model "$MODEL" --warmup-length 4096)
  else E2E=(--device cuda --model-shape "${SHAPE:-llama-3.2-1b}" --warmup-length 4096); fi
  L1=${L1-32K,64K,128K}; CH=16384; CH_AT=${CH_AT:-128K}; L2=${L2-1M}
fi
part "(d) end to end, ${MODEL:-${SHAPE:-llama-3.2-1b} shape}"
T1=$(cap 110 75); [ -z "$L2" ] && T1=$(cap 300 10)
if [ -n "$L1" ]; then
timeout "$T1" $PY -m delta_attn.cli bench e2e "${E2E[@]}" --lengths "$L1" --methods dense,delta \
  --chunk-size "0,$CH" --chunk-methods delta --chunk-lengths "$CH_AT" --chunk-cache preallocated,dynamic \
  --reps 2 --time-limit $(( T1 - 20 )) ${PROFILE_AT:+--profile-length "$PROFILE_AT"} --out "$OUT/e2e" \
  > "$OUT/e2e.log" 2>&1
echo "exit $?"; grep -E "TTFT|warm-up|skipped|OOM|device .* ms" "$OUT/e2e.log" | head -24
fi
T2=$(cap 120 12)
if [ -n "$L2" ]; then
timeout "$T2" $PY -m delta_attn.cli bench e2e "${E2E[@]}" --lengths "$L2" --methods delta \
  --chunk-size "${L2_CHUNKS:-$CH}" --chunk-methods delta --chunk-cache preallocated \
  --reps 2 --out "$OUT/e2e_1m" > "$OUT/e2e_1m.log" 2>&1
echo "exit $?"; grep -E "TTFT|warm-up|skipped|OOM" "$OUT/e2e_1m.log" 2>/dev/null | head -10
fi
if [ -f "$OUT/e2e/results.json" ] && [ -f "$OUT/e2e_1m/results.json" ]; then  # one plot over every length
  $PY -m delta_attn.cli bench e2e-report --inputs "$OUT/e2e" "$OUT/e2e_1m" --out "$OUT/e2e_all" > "$OUT/e2e_all.log" 2>&1
  echo "e2e-report exit $?: $OUT/e2e_all/plot.png"; grep -E "^note|No floor" "$OUT/e2e_all.log" | head -5
fi
fi

# ---- summary -----------------------------------------------------------------------------------------------
part "summary"
$PY - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(*p):
    try:
        return json.load(open(os.path.join(out, *p)))
    except (OSError, ValueError):
        return None
f = lambda x, p=".2f": "-" if x is None else format(x, p)  # noqa: E731
summary = {}
chk = load("checks", "checks.json") or load("checks_tiny.json")
if chk:
    ok = sum(r["ok"] for r in chk)
    worst = max((r["ratio"] for r in chk if r["ratio"] == r["ratio"]), default=float("nan"))
    print(f"(a) checks: {ok}/{len(chk)} passed, worst err_kernel/err_ref {worst:.2f}; failed: "
          + (", ".join(r["name"] for r in chk if not r["ok"]) or "none"))
    summary["checks"] = dict(passed=ok, total=len(chk), worst_ratio=worst)
lay = load("layer", "results.json")
if lay:
    print(f"(b) one layer, {lay['meta']['device']}, matmul {lay['meta']['matmul_tflops']:.0f} TFLOP/s")
    print(f"{'N':>5s} {'method':18s} {'ms':>9s} {'x cuDNN':>8s} {'of floor':>8s} {'1st/steady':>10s}")
    for row in lay["results"]:
        ms, fl = row["methods"], row["flops"]
        cud = ms.get("cudnn", {}).get("ms")
        for name, r in ms.items():
            if "ms" not in r:
                print(f"{row['label']:>5s} {name:18s} {r.get('error', '')[:60]}")
                continue
            base = name.split("+")[0]
            fl_m = fl.get(base) or fl.get("delta")
            floor = None if cud is None or name == "cudnn" or base == "rows" else (cud / r["ms"]) / (fl["dense"] / fl_m)
            sp = None if cud is None else cud / r["ms"]
            print(f"{row['label']:>5s} {name:18s} {r['ms']:9.2f} {f(sp, '.1f'):>8s} {f(floor):>8s} "
                  f"{f(r.get('first_vs_steady')):>10s}")
        d, s, a = (ms.get(m, {}).get("ms") for m in ("delta", "sparse", "delta_auto"))
        if None not in (d, s, a):
            print(f"{row['label']:>5s} λ=auto extra over Δ: {a - d:.2f} ms = {100 * (a - d) / (d - s):.0f} % of Δ's "
                  f"dense-row time ({d - s:.2f} ms)")
fc = load("first_call.json")
if fc:
    worst = max(r["first_vs_steady"] for r in fc["rows"])
    print(f"(c) first call at a never-seen length (warm-up at {fc['warmup_length']}): worst first/steady {worst:.2f}; "
          f"new compilations: {fc['grew']}")
cells = []
for p in ("e2e", "e2e_1m"):
    r = load(p, "results.json")
    if r:
        cells += [c for c in r["cells"] if "ttft_s" in c]
        print(f"(d) {p}: {r['meta']['device']}, {r['meta']['model_shape']}, warm-up {r['meta']['warmup']['length']}")
if cells:
    print(f"{'N':>6s} {'method':8s} {'chunk':>18s} {'TTFT s':>8s} {'tok/s':>9s} {'x dense':>8s} {'chunk/1shot':>11s} "
          f"{'peak GB':>8s} {'1st/steady':>10s}")
    for c in cells:
        ch = "one-shot" if not c["chunk"] else f"{c['chunk']} {c['cache'] or 'prealloc'}"
        print(f"{c['label']:>6s} {c['method']:8s} {ch:>18s} {c['ttft_s']:8.3f} {c['tokens_per_s']:9.0f} "
              f"{f(c.get('speedup_vs_dense')):>8s} {f(c.get('chunked_over_one_shot')):>11s} {f(c.get('peak_gb'), '.1f'):>8s} "
              f"{f(c.get('first_vs_steady')):>10s}")
    # t = a·N + b·N², least squares over the measured one-shot dense cells only (each on the fastest SDPA backend
    # at its length; the note names the backends of its points)
    from delta_attn.bench.e2e_report import dense_backends, dense_fit, dense_fit_at
    from delta_attn.bench.layer import fmt_length
    if dense_backends(cells):
        print("dense SDPA backend: " + ", ".join(f"{fmt_length(n)} {be}" for n, be in sorted(dense_backends(cells).items())))
    fit = dense_fit(cells)
    if fit:
        for c in cells:
            if c["method"] == "delta" and c["n"] > fit["lengths"][-1]:
                est = dense_fit_at(fit, c["n"])
                print(f"{c['label']:>6s} dense EXTRAPOLATED ({fit['note']}): {est:.2f} s -> "
                      f"Δ ({c['chunk'] or 'one-shot'}) is {est / c['ttft_s']:.1f}x dense (extrapolated)")
                summary.setdefault("extrapolated", []).append(
                    dict(n=c["n"], dense_s=est, delta_s=c["ttft_s"], fit=fit["note"], dense_backends=fit["backends"]))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
echo "total $(( $(date +%s) - T0 )) s"
