"""``delta-attn generate``: answer a prompt (file or stdin) with Δ prefill, streaming the reply (``--model``:
default SmolLM2-135M-Instruct).

    delta-attn generate prompt.txt --window 2048 --sink 128 --gamma 64
    cat long.txt | delta-attn generate --mode sparse --window 256

The prompt is wrapped in the model's chat template, its trailing whitespace (a file's final newline)
stripped; ``--raw`` feeds it exactly as it is, without template or stripping. Prefill uses the
chosen mode (``delta`` by default) and decode is dense over the full KV cache. ``--chunk-size N``
prefills in chunks of N tokens with :func:`delta_attn.chunked_prefill` (into the in-place KV cache),
``--chunk-size 0`` in one forward; the default ``auto`` chunks prompts longer than 32,768 tokens in
chunks of 16,384 when the settings are causal (:func:`delta_attn.generation.resolve_chunk_size`: it
bounds activation memory at about the one-shot time) and runs shorter ones in one forward. A prompt
longer than the model's context is an error unless ``--allow-overflow``; a reply that would run past
the context is cut at the context's end (with a note) unless ``--allow-overflow``.
"""

from __future__ import annotations

import sys

from . import cli_options as opt


class _Printer:
    """``on_token`` callback that prints the reply as it grows (decoding the whole reply each time, so
    tokens that only form a character together are printed once the character is complete)."""

    def __init__(self, tokenizer, out=None) -> None:
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, index: int, token: int) -> bool:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # U+FFFD: an incomplete UTF-8 sequence, wait for its next token
            self.out.write(text[self.printed :])
            self.out.flush()
            self.printed = len(text)
        return True


def _read_prompt(source: str | None) -> str:
    if source not in (None, "-"):
        return opt.read_text_file(source)
    if sys.stdin.isatty():
        print("reading the prompt from stdin (end with Ctrl-D) ...", file=sys.stderr)
    buffer = getattr(sys.stdin, "buffer", None)
    return opt.decode_text(buffer.read(), "stdin") if buffer is not None else sys.stdin.read()


def _check_dense_layers(dense_layers, num_layers: int) -> None:
    top = dense_layers if isinstance(dense_layers, int) else max(dense_layers, default=-1) + 1
    if top > num_layers:
        raise opt.UsageError(f"--dense-layers {dense_layers}: the model has {num_layers} layers (0..{num_layers - 1})")


def run(args) -> int:
    from .models import model_info

    # the cheap checks first (the prompt file, the method, the model's header): no torch/transformers yet
    text = _read_prompt(args.prompt)
    if not text.strip():
        raise opt.UsageError("the prompt is empty: pass a file or pipe text on stdin")
    if not args.raw:  # a file's trailing newline would be part of the question (and change the answer)
        text = text.rstrip()
    config = opt.delta_config(args)
    if isinstance(args.chunk_size, int) and not config.is_causal:  # "auto" falls back to one forward by itself
        raise opt.UsageError(f"--chunk-size {args.chunk_size}: {config.non_causal_problem('it cannot run chunked')}")
    info = model_info(args.model, rope_scaling=args.rope_scaling)
    _check_dense_layers(args.dense_layers, info.num_layers)
    opt.check_device(args.device)

    from .generation import SamplingParams, generate, resolve_chunk_size, stop_token_ids
    from .hf import enable
    from .models import load_model, load_tokenizer

    opt.setup_threads(args.threads)

    tokenizer = load_tokenizer(args.model)
    if not args.raw:
        from .prompts import chat_frame

        text = chat_frame(tokenizer).render(text)
    ids = tokenizer(text, add_special_tokens=args.raw)["input_ids"]
    opt.check_fits_context(len(ids), info.context_length, args.allow_overflow, note=info.context_note)
    max_new = args.max_new_tokens
    if not args.allow_overflow and len(ids) + max_new > info.context_length:
        max_new = info.context_length - len(ids)
        print(f"[the reply is cut at {max_new} tokens, where the context ends]", file=sys.stderr)
    if max_new < 1:
        raise opt.UsageError(
            f"the prompt fills the whole {info.context_length}-token context: no room for a reply "
            f"({opt.OVERFLOW_OPTION} to go past it)"
        )

    model, tokenizer = load_model(args.model, device=args.device, rope_scaling=args.rope_scaling)
    enable(model, config)
    chunk = resolve_chunk_size(model, len(ids), args.chunk_size)
    how = f"in chunks of {chunk}" if chunk else "in one forward"
    print(
        f"[{len(ids)} prompt tokens; {config.mode} prefill ({config.method_name} sink {config.sink} + window "
        f"{config.window}, gamma {config.gamma}) {how}, dense decode]",
        file=sys.stderr,
        flush=True,
    )
    generate(
        model,
        [ids],
        SamplingParams(max_new, stop_token_ids=stop_token_ids(tokenizer)),
        chunk_size=chunk,
        on_token=_Printer(tokenizer),
    )
    print()
    return 0


def register(subparsers) -> None:
    p = opt.add_command(
        subparsers,
        "generate",
        "answer a prompt (file or stdin) with Δ prefill (default model SmolLM2; --model)",
        __doc__,
    )
    p.add_argument("prompt", nargs="?", default=None, help="UTF-8 prompt file (default, or '-': read stdin)")
    opt.add_mode_option(p)
    opt.add_dense_layers_option(p)
    p.add_argument("--max-new-tokens", type=opt.positive_int, default=256, help="reply length limit (default 256)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="feed the prompt exactly as is: no chat template, trailing whitespace kept (default off: the "
        "template, and trailing whitespace stripped)",
    )
    opt.add_method_options(p, window=2048, sink=128, gamma=64)
    opt.add_auto_chunk_option(p)
    opt.add_model_options(p)
    opt.add_overflow_option(p)
    p.set_defaults(func=run)
