"""``delta-attn serve``: an OpenAI-compatible server with Δ prefill and dense decode.

    delta-attn serve                                  # the bundled SmolLM2 on http://127.0.0.1:8000/v1
    delta-attn serve ./my-llama --window 4096 --gamma 64 --chunk-size 8192
    delta-attn serve model.gguf --host 0.0.0.0 --port 9000

MODEL is a named model (default smollm2-135m; `delta-attn models list`), a GGUF file or a local HF folder;
nothing is downloaded. Prompts are prefilled with the chosen Δ settings in chunks of --chunk-size
tokens (memory stays bounded), replies are decoded densely. Requests are queued and run one at a time.
A request may override the Δ settings with an extra body field, e.g. "delta": {"mode": "recompute"}.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys

from .. import cli_options as opt

DEFAULT_CHUNK = 4096
DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # = serve.app.DEFAULT_MAX_BODY (not imported: --help stays light)


def port_number(text: str) -> int:
    """A TCP port: 0 (any free one) to 65535."""
    value = opt.nonnegative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be <= 65535, got {value}")
    return value


def _config(args):
    return opt.delta_config(args)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so that a taken port is reported at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise opt.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _serving_packages():
    """uvicorn (and a check that the rest of transformers[serving] is installed)."""
    try:
        import fastapi  # noqa: F401
        import openai  # noqa: F401
        import uvicorn
    except ModuleNotFoundError as exc:
        raise opt.UsageError(
            f"delta-attn serve needs {exc.name}: pip install 'delta-attn[serve]' (transformers[serving])"
        ) from None
    return uvicorn


def _checked(args):
    """(model source, Δ config): every check that needs no model weights, the cheap ones first."""
    from .loading import inspect_model

    if args.model_arg is not None and args.model is not None:
        raise opt.UsageError("give the model either as MODEL or with --model/--gguf, not both")
    config = _config(args)
    source = inspect_model(args.model_arg or args.model, args.served_model_name)
    from ..methods import describe_settings
    from .engine import config_problem  # imports torch

    if args.chunk_size and not config.is_causal:
        raise opt.UsageError(
            f"--chunk-size {args.chunk_size}: these Δ settings ({describe_settings(config)}) are not causal (some rows "
            "read later rows) and cannot be prefilled in chunks; use causal settings or --chunk-size 0"
        )
    problem = config_problem(config, chunk_size=args.chunk_size, num_layers=source.num_layers)
    if problem:
        raise opt.UsageError(problem)
    opt.check_device(args.device)
    return source, config


def _engine(args, source, config):
    from ..hf import enable
    from .engine import Engine, ServedModel
    from .loading import load_model

    model, tokenizer = load_model(source, device=args.device, dtype=args.dtype)
    try:
        enable(model, config)  # refuses a model Δ cannot serve now rather than at the first request
    except ValueError as exc:
        raise opt.UsageError(f"MODEL {source.name}: {exc}") from None
    served = ServedModel(model, tokenizer, source.name, source.context_length, source.num_layers)
    return Engine(
        served,
        config,
        chunk_size=args.chunk_size or None,  # 0: one-shot prefill
        default_max_tokens=args.max_tokens,
        allow_overflow=args.allow_overflow,
    )


def _log_requests_to_stderr() -> None:
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("delta_attn.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def run(args) -> int:
    source, config = _checked(args)  # the cheap checks first: a mistake is reported before the heavy imports
    uvicorn = _serving_packages()
    from ..methods import describe_settings
    from .app import build_app
    from .engine import prefill_label

    opt.setup_threads(args.threads)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    engine = _engine(args, source, config)
    _log_requests_to_stderr()
    url = f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"
    print(
        f"delta-attn serve: {source.name} at {url} (Δ: {describe_settings(config)}; {prefill_label(args.chunk_size)}); "
        "Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    if not _is_loopback(args.host):
        print(
            f"note: listening on {args.host}: anyone who reaches it can use the model (no authentication)",
            file=sys.stderr,
        )
    server = _server(uvicorn, build_app(engine, max_body=args.max_body), engine)
    server.run(sockets=[sock])  # returns once a signal stopped it (see _server)
    if not engine.close(timeout=STOP_GRACE_S):  # inside one long forward (a one-shot prefill): not waited for
        print("delta-attn serve: the worker is still in a forward pass; leaving it", file=sys.stderr)
    print("delta-attn serve: stopped", file=sys.stderr, flush=True)
    return 0  # the command then leaves with os._exit (fast_exit): no teardown, no wait for that thread


STOP_GRACE_S = 0.5  # after the last client was answered, how long the worker may take to finish its step


def _server(uvicorn, app, engine):
    """A uvicorn server that stops on SIGINT and SIGTERM alike, at once and with exit status 0.

    On the signal, :meth:`Engine.shutdown` stops the running job at its next token (or prefill chunk) and
    answers every waiting request with a 503 OpenAI error (a stream gets it as its last event), so the
    connections close within a few hundred milliseconds; uvicorn then stops. uvicorn's own handler is
    replaced because it re-raises the signal after stopping (SIGTERM would kill the process: exit 143).
    A second Ctrl-C stops without waiting for the connections.
    """

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            engine.shutdown()

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    return Server(config)


def register(subparsers) -> None:
    p = opt.add_command(
        subparsers,
        "serve",
        "an OpenAI-compatible HTTP server with Δ prefill (chat and completions, streaming)",
        __doc__,
    )
    p.add_argument(
        "model_arg",
        nargs="?",
        type=opt.model_spec,
        default=None,
        metavar="MODEL",
        help="a model name (delta-attn models list), a .gguf file or a Hugging Face model folder "
        "(default: smollm2-135m, the bundled SmolLM2-135M-Instruct); same as --model",
    )
    p.add_argument(
        "--served-model-name", default=None, help="the model id clients use (default: the file or folder name)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument(
        "--max-tokens",
        type=opt.positive_int,
        default=DEFAULT_MAX_TOKENS,
        help=f"reply length limit when a request sets none (default {DEFAULT_MAX_TOKENS})",
    )
    p.add_argument(
        "--max-body",
        type=opt.positive_int,
        default=DEFAULT_MAX_BODY,
        metavar="BYTES",
        help=f"largest request body accepted, in bytes (default {DEFAULT_MAX_BODY}, 4 MiB); a larger one gets "
        "a 413 before it is read",
    )
    opt.add_mode_option(p)
    opt.add_dense_layers_option(p)
    opt.add_method_options(p, window=2048, sink=128, gamma=64)
    p.add_argument(
        "--chunk-size",
        type=opt.nonnegative_int,
        default=DEFAULT_CHUNK,
        help=f"prefill in chunks of this many tokens (default {DEFAULT_CHUNK}); 0: the whole prompt in one "
        "forward, which non-causal settings (--interp linear, --delta-scale auto-global, --extra-anchors) need",
    )
    opt.add_model_options(p, dtype=True, rope=False)  # the server loads through serve.loading, unscaled
    opt.add_overflow_option(p)
    p.set_defaults(func=run, fast_exit=True)
