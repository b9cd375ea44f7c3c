#!/usr/bin/env bash
# Issue 16, eighth session (2026-12-07): the anchor-row and sparse kernels toward the FLOP floor, one device call of
# about 6–7 minutes on one GPU. Parts, each under `timeout`, records tarred into $OUT/floor.tgz, a table printed last:
#   (sweep) `python -m delta_attn.bench.launch --n 128K`: every dense-rows and sparse candidate (8 each: tile shape,
#           warps, pipeline depth, work items per SM) on one Llama-3-8B layer beside SDPA cuDNN, each output checked
#           against the shipped configuration's; the fastest correct pair written as best_128K.json
#   (k)     the float64-oracle checks (bench/check.py: kernel error ≤ 2× PyTorch's) with the sweep's winners: the
#           fused λ kernels and the sparse kernel's Δ epilogue, now adding λΔ to its rows in place (EPILOGUE 1 and 2,
#           EXACT_ANCHOR, STORE_DELTA), chunked calls, GQA 1:1..4:1, d 64/80/128, batch 2
#   (layer) `delta-attn bench layer` at 128K and 1M with the sweep's winners (--kernel-config) and with the shipped
#           configuration, cuDNN timed in each run: Δ ÷ cuDNN against the 18.5× target
#   (ncu)   Nsight Compute on one dense-rows and one sparse launch at 128K (shipped configuration; clocks left alone):
#           speed of light, warp stalls, occupancy — where the 1.3 ms between Δ and the target goes
#   (host)  how long one Δ call's host code takes to enqueue its kernels (the GPU kept busy meanwhile)
# Environment: OUT, L (seconds for the whole call, default 420), PARTS (default "sweep k layer ncu host").
set -uo pipefail
T0=$(date +%s)
L=${L:-420}
export TOKENIZERS_PARALLELISM=false PYTHONPATH=src
R=/tmp/floor; mkdir -p $R "$OUT"
PARTS=" ${PARTS:-sweep k layer ncu host} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
left() { echo $(( L - ($(date +%s) - T0) )); }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/gpu.txt

if want sweep; then
  echo "== (sweep) launch configurations at 128K ($(left) s left)"
  timeout 150 python3 -m delta_attn.bench.launch --n 128K --workers 8 --out $R/sweep > $R/sweep.log 2>&1
  echo "exit $?"; grep -vE "^USDT|^STAGE" $R/sweep.log | tail -22
fi

if want k; then
  KC=(); [ -f $R/sweep/best_128K.json ] && KC=(--kernel-config $R/sweep/best_128K.json)
  echo "== (k) checks with ${KC[*]:-the shipped configs} ($(left) s left)"
  timeout 120 python3 -m delta_attn.bench.check --workers 8 --out $R/checks "${KC[@]}" \
    --cases delta-stream-g4,delta-scale0.5,chunk-repeat,delta-auto,delta-auto-topk,delta-auto-global,chunk-auto,delta-auto-b2-gqa,delta-auto-d80-g8,chunk-gqa-strided,delta-d64-b2-mha,delta-hf-layout,unit \
    > $R/checks.log 2>&1
  echo "exit $?"; grep -E "PASS|FAIL|passed" $R/checks.log | cut -c1-150 | tail -16
fi

if want layer; then
  echo "== (layer) one Llama-3-8B layer, shipped vs swept configs ($(left) s left)"
  M=cudnn,sparse,delta,delta_auto,rows
  if [ -f $R/sweep/best_128K.json ]; then
    timeout 100 python3 -m delta_attn.cli bench layer --lengths 128K,1M --methods $M --dense-once-above 256K \
      --budget 0.4 --reps 7 --kernel-config $R/sweep/best_128K.json --out $R/layer_best > $R/layer_best.log 2>&1
    echo "best: exit $?"; grep -E "^ +(128K|1M) " $R/layer_best.log | head -12
  fi
  timeout 60 python3 -m delta_attn.cli bench layer --lengths 128K --methods $M --budget 0.4 --reps 7 \
    --out $R/layer_shipped > $R/layer_shipped.log 2>&1
  echo "shipped: exit $?"; grep -E "^ +128K " $R/layer_shipped.log | head -6
fi

if want ncu; then
  echo "== (ncu) dense rows + sparse at 128K ($(left) s left)"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  cat > $R/one_call.py <<'PY'
import torch
from delta_attn import DeltaConfig
from delta_attn.kernels import triton_prefill
n, g = 131072, torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k, v = (torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
for _ in range(2):  # the first call compiles; ncu skips its launches
    triton_prefill(q, k, v, DeltaConfig(), scale=128**-0.5, prompt_len=n)
torch.cuda.synchronize()
PY
  if [ -n "$NCU" ]; then
    timeout 90 "$NCU" --clock-control none --kernel-name regex:"_dense_rows_kernel|_sparse_kernel" --launch-skip 2 \
      --launch-count 2 --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
      --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section SchedulerStats python3 $R/one_call.py > $R/ncu.txt 2>&1
    echo "exit $?"
    grep -E "_kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Config|Block Limit|Issue Slots Busy|Executed Ipc A|Warp Cycles Per Issued|No Eligible|One or More|spends .* cycles|stalled" \
      $R/ncu.txt | cut -c1-120 | head -60
  else
    echo "no ncu on this machine"
  fi
fi

if want host; then
  echo "== (host) enqueue time of one Δ call ($(left) s left)"
  timeout 40 python3 - <<'PY' 2>&1 | tee $R/host.txt
import time, torch
from delta_attn import DeltaConfig
from delta_attn.kernels import triton_prefill
n, g = 131072, torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k, v = (torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
for cfg in (DeltaConfig(), DeltaConfig(delta_scale="auto"), DeltaConfig(mode="sparse")):
    call = lambda: triton_prefill(q, k, v, cfg, scale=128**-0.5, prompt_len=n)  # noqa: E731
    call(); torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU work queued first: the call below only enqueues
        t0 = time.perf_counter(); call(); ts.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
    ts.sort()
    print(f"host enqueue {cfg.mode:6s} λ={cfg.delta_scale!s:5s}: median {ts[5]:.3f} ms, min {ts[0]:.3f} ms")
PY
fi
tar czf "$OUT/floor.tgz" -C /tmp floor
echo "== floor done after $(( $(date +%s) - T0 )) s"
