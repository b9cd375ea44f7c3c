"""``delta-attn generate``: answer a prompt (file or stdin) with SmolLM2 and Δ prefill, streaming the reply.

    delta-attn generate prompt.txt --window 2048 --sink 128 --gamma 64
    cat long.txt | delta-attn generate --mode sparse --window 256

The prompt is wrapped in the model's chat template (``--raw`` feeds it as is); prefill uses the
chosen mode (``delta`` by default) and decode is dense over the full KV cache. ``--chunk-size``
prefills long prompts in chunks with :func:`delta_attn.chunked_prefill`.
"""

from __future__ import annotations

import argparse
import sys


def run(args) -> int:
    import torch
    from transformers import TextStreamer

    from .config import DeltaConfig
    from .hf import chunked_prefill, enable
    from .models import load_smollm2

    if args.prompt in (None, "-"):
        if sys.stdin.isatty():
            print("reading the prompt from stdin (end with Ctrl-D) ...", file=sys.stderr)
        text = sys.stdin.read()
    else:
        with open(args.prompt, encoding="utf-8") as f:
            text = f.read()
    if not text.strip():
        raise SystemExit("the prompt is empty: pass a file or pipe text on stdin")
    dense_layers = args.dense_layers
    config = DeltaConfig(
        mode=args.mode,
        sparse=args.sparse,
        window=args.window,
        sink=args.sink,
        gamma=args.gamma,
        interp=args.interp,
        dense_layers=dense_layers,
    )
    model, tokenizer = load_smollm2(device=args.device, gguf_path=args.gguf)
    enable(model, config)
    if not args.raw:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=args.raw)["input_ids"].to(device)
    print(
        f"[{ids.shape[1]} prompt tokens; {config.mode} prefill ({config.method_name} sink {config.sink} + window "
        f"{config.window}, gamma {config.gamma}), dense decode]",
        file=sys.stderr,
        flush=True,
    )
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(
        max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer, pad_token_id=tokenizer.pad_token_id
    )
    with torch.no_grad():
        if args.chunk_size and ids.shape[1] > 1:
            # prefill all but the last prompt token in chunks; generate() then feeds only the uncached
            # last token (a dense step over the cache, like the exact tail) and streams the reply
            pre = chunked_prefill(model, ids[:, :-1], chunk_size=args.chunk_size, progress=True)
            model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=pre.past_key_values, **kwargs
            )
        else:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    return 0


def _dense_layers(value: str):
    """``--dense-layers 3`` (first 3 layers) or ``--dense-layers 0,5,7`` (a list)."""
    parts = [p for p in value.split(",") if p.strip()]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or a comma-separated list of ints, got {value!r}") from None
    return nums[0] if len(nums) == 1 and "," not in value else tuple(nums)


def register(subparsers) -> None:
    from .demo import add_method_arguments

    p = subparsers.add_parser(
        "generate",
        help="answer a prompt (file or stdin) with SmolLM2 and Δ prefill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default=None, help="prompt file ('-' or omitted: read stdin)")
    p.add_argument(
        "--mode",
        default="delta",
        choices=("delta", "recompute", "sparse", "dense"),
        help="prefill method (default delta); decode is always dense",
    )
    p.add_argument(
        "--dense-layers",
        type=_dense_layers,
        default=0,
        help="layers kept dense: an int k (the first k) or a list like 0,1,5 (default 0)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="reply length limit (default 256)")
    p.add_argument("--raw", action="store_true", help="feed the prompt as is (no chat template)")
    add_method_arguments(p, window=2048, sink=128, gamma=64)
    p.set_defaults(func=run)
