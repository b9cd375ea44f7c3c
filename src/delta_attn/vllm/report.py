"""The short summary table of the vLLM GPU checks (``python -m delta_attn.vllm.check table``), read back from the
JSON files each part of :mod:`delta_attn.vllm.check` writes."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(x, unit: str = "") -> str:
    return f"{x:.3f}{unit}" if isinstance(x, (int, float)) else ("—" if x is None else str(x))


def _ratio(num, den) -> float | None:
    """num / den when both were measured (floats) and den > 0, else None (a skipped or failed cell)."""
    return num / den if isinstance(num, float) and isinstance(den, float) and den > 0 else None


def table(out: Path) -> str:
    """The short summary of whatever parts ran (read back from their JSON files)."""
    lines = []
    path = out / "vllm_layer.json"
    if path.exists():
        r = json.loads(path.read_text())
        lines += ["| layer check (bf16, max error / max reference) | value |", "|---|---|"]
        for key in (
            "delta_rows_vs_delta_attention",
            "chunked_3_vs_one_shot",
            "gamma1_vs_stock_fa",
            "stock_rows_vs_stock_fa",
            "delta_vs_stock_fa",
            "sparse_vs_stock_fa",
        ):
            lines.append(f"| {key} | {_fmt(r.get(key))} |")
        lines += [f"| pass (≤ 0.02 on the first four, sparse > 0.1) | {r.get('pass')} |", ""]
    path = out / "vllm_bench.json"
    if path.exists():
        runs = {(r["backend"], r["chunk"]): r for r in json.loads(path.read_text())["runs"]}
        lengths = sorted({int(n) for r in runs.values() for n in r.get("ttft_s", {})})
        lines += ["| TTFT (s) | FA chunked | Δ chunked | speed-up | FA one chunk | Δ one chunk | speed-up |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for n in lengths:
            row = [f"{n // 1024}K"]
            for chunk in ("default", "one"):
                fa = runs.get(("flash", chunk), {}).get("ttft_s", {}).get(str(n))
                de = runs.get(("delta", chunk), {}).get("ttft_s", {}).get(str(n))
                row += [_fmt(fa), _fmt(de), _fmt(_ratio(fa, de), "×")]
            lines.append("| " + " | ".join(row) + " |")
        for key in ("decode_tok_s_batch1_ctx32768", "decode_tok_s_batch16_ctx2048"):
            fa = runs.get(("flash", "default"), {}).get(key)
            de = runs.get(("delta", "default"), {}).get(key)
            lines.append(f"| {key} (FA, Δ, Δ ÷ FA) | {_fmt(fa)} | {_fmt(de)} | {_fmt(_ratio(de, fa), '×')} | | | |")
        for backend in ("flash", "delta"):
            c = runs.get((backend, "default"), {}).get("concurrency")
            if c:
                reps = ", ".join(f"{x:.2f}" for x in c.get("reps", [c["wall_s"]]))
                lines.append(
                    f"| 16 mixed requests, {backend} | ok={c['ok']} | {c['tokens_per_s']:.0f} tok/s | "
                    f"{c['wall_s']:.2f} s (runs: {reps} s) | | | |"
                )
        for (backend, chunk), r in sorted(runs.items()):
            for key in ("error", "skipped", "engine_error"):
                if r.get(key):
                    lines.append(f"| {backend} {chunk} {key} | {str(r[key])[:80]} | | | | | |")
        lines.append("")
    path = out / "vllm_needles.json"
    if path.exists():
        r = json.loads(path.read_text())
        lines += ["| greedy outputs (Qwen2.5-Coder-1.5B, NIAH) | identical |", "|---|---|"]
        for name in ("delta", "control"):
            v = r.get(name, {})
            lines.append(f"| {name} | {v.get('identical', v.get('error'))} / {v.get('of', '')} |")
    return "\n".join(lines)
