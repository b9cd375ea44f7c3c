"""The model being served and the one worker thread that runs it.

Concurrency: **requests are queued, not batched.** One worker thread owns the model and runs one
request at a time, first come first served; every request prefills into its own fresh KV cache, so
caches are never shared or interleaved, and each request's answer is exactly what it would be alone. A
request's Δ settings are switched on (:func:`delta_attn.enable`) by the worker right before it runs,
which is safe because nothing else touches the model. (transformers' serving ``InferenceThread`` is not
used: it cannot be stopped, and a daemon thread still inside torch when the interpreter exits aborts
the process with ``terminate called without an active exception``.)

Stopping early: a job whose client went away (``Job.cancel``) or that is running when the server shuts
down (:meth:`Engine.shutdown`) stops at its next token, or between two prefill chunks; a job cancelled
while it waits in the queue is skipped. On shutdown every request still waiting for its answer is failed
at once with a 503 :class:`~delta_attn.serve.errors.APIError`, whatever the worker is doing.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DeltaConfig
from ..generation import FINISH_LENGTH, FINISH_STOP, SamplingParams, decode, prefill, stop_token_ids
from ..methods import describe_settings
from .errors import SERVER_ERROR, APIError
from .text import ReplyText

LOG = logging.getLogger("delta_attn.serve")

FINISH_CANCELLED = "cancelled"  # the client went away (only ever logged: nobody is left to answer)


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and what the server needs to know about it."""

    model: object  # a transformers causal LM
    tokenizer: object
    name: str  # the id clients use (``"model": ...``) and /v1/models lists
    context_length: int  # tokens
    num_layers: int
    created: int = field(default_factory=lambda: int(time.time()))  # unix time, for /v1/models


@dataclass(frozen=True)
class Settings:
    """One request's decoding settings, validated (see :mod:`delta_attn.serve.requests`)."""

    config: DeltaConfig
    max_tokens: int | None  # None: the server's default
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]


@dataclass
class Job:
    """One request on its way through the worker."""

    request_id: str
    endpoint: str  # "chat" or "completion", for the log
    prompt_ids: list[int]
    config: DeltaConfig
    sampling: SamplingParams
    stop: tuple[str, ...]
    on_text: Callable[[str], None] | None = None  # called on the worker thread with each new piece of text
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client is gone: stop at the next token (or skip the job if it has not started)."""
        self.cancelled.set()


@dataclass(frozen=True)
class Outcome:
    """A finished job: the reply and what the usage counts and the log line report."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | FINISH_CANCELLED
    prefill_s: float
    decode_s: float


def prefill_label(chunk_size: int | None) -> str:
    return f"prefill in chunks of {chunk_size}" if chunk_size else "one-shot prefill"


def config_problem(config: DeltaConfig, *, chunk_size: int | None, num_layers: int) -> str | None:
    """Why ``config`` cannot run with ``num_layers`` layers and ``chunk_size``-token chunks (None if it can)."""
    if chunk_size and not config.is_causal:
        return (
            f"the Δ settings ({describe_settings(config)}) are not causal (some rows read later rows), and prompts are "
            f"prefilled in chunks of {chunk_size} tokens here: only causal settings can run"
        )
    dl = config.dense_layers
    top = dl if isinstance(dl, int) else max(dl, default=-1) + 1
    if top > num_layers:
        return f"dense_layers {dl}: the model has {num_layers} layers (0..{num_layers - 1})"
    return None


def shutting_down_error() -> APIError:
    """The answer of a request the server could not finish because it is stopping."""
    return APIError(
        "the server is shutting down; this request was not completed (retry against a running server)",
        status=503,
        type=SERVER_ERROR,
        code="server_shutting_down",
    )


class _Worker:
    """The one thread that runs jobs, in order; its results go back to the event loop that asked.

    A plain thread with a queue, so that it can be told to finish (:meth:`close`): the server joins it
    before the process exits.
    """

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="delta-attn-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, job: Job, future: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.put((fn, job, future, loop))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            fn, job, future, loop = item
            try:
                result, error = fn(job), None
            except BaseException as exc:  # noqa: BLE001 - handed to the request that asked, which reports it
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error)
            except RuntimeError:  # the event loop is closed: the server stopped, nobody waits for this answer
                pass
            item = fn = job = future = None  # drop references (the cache of a finished job) before waiting again

    def close(self, timeout: float) -> bool:
        """Ask the thread to stop after the job it runs; True if it stopped within ``timeout`` seconds."""
        self._queue.put(self._STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _resolve(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # already failed by Engine.shutdown
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Engine:
    """Serves one model: checks a request against the model, queues it, runs it on the worker thread.

    Args:
        served: the model.
        config: the server's Δ settings (a request may override them).
        chunk_size: prefill in chunks of this many tokens (None: the whole prompt at once).
        default_max_tokens: reply length limit when a request names none.
        allow_overflow: accept prompts and replies longer than the model's context.
    """

    def __init__(
        self,
        served: ServedModel,
        config: DeltaConfig,
        *,
        chunk_size: int | None,
        default_max_tokens: int,
        allow_overflow: bool = False,
    ) -> None:
        self.served = served
        self.config = config
        self.chunk_size = chunk_size
        self.default_max_tokens = default_max_tokens
        self.allow_overflow = allow_overflow
        self._stop_ids = stop_token_ids(served.tokenizer)
        self._device = next(served.model.parameters()).device
        self._worker = _Worker()
        self._lock = threading.Lock()
        self._waiting: dict[asyncio.Future, tuple[Job, asyncio.AbstractEventLoop]] = {}  # queued or running
        self._closing = threading.Event()

    @property
    def pending(self) -> int:
        """Requests queued or running (``/health`` reports it)."""
        return len(self._waiting)

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._closing.is_set()

    def shutdown(self) -> None:
        """Stop serving: the running job stops at its next token (or prefill chunk), queued jobs are skipped,
        and every request still waiting is failed now with a 503 (see :func:`shutting_down_error`).

        Safe to call from a signal handler or any thread, more than once.
        """
        self._closing.set()
        with self._lock:
            waiting = list(self._waiting.items())
        for future, (job, loop) in waiting:
            job.cancel()
            try:
                loop.call_soon_threadsafe(_fail_shutting_down, future)
            except RuntimeError:  # that loop is closed already
                pass

    def close(self, timeout: float = 1.0) -> bool:
        """:meth:`shutdown`, then wait up to ``timeout`` s for the worker thread to finish; True if it did."""
        self.shutdown()
        return self._worker.close(timeout)

    def check_config(self, config: DeltaConfig, param: str) -> None:
        """A Δ config this server cannot run with this model: :class:`APIError` naming ``param``."""
        problem = config_problem(config, chunk_size=self.chunk_size, num_layers=self.served.num_layers)
        if problem is None:
            from ..ops import select_backend

            try:  # e.g. backend "triton" on a CPU model
                select_backend(config, self._device)
            except ValueError as exc:
                problem = f"backend {config.backend!r}: {exc}"
        if problem:
            raise APIError(problem, param=param)

    def job(self, request_id: str, endpoint: str, prompt_ids: list[int], settings: Settings) -> Job:
        """A :class:`Job` for ``prompt_ids``; a prompt the model cannot answer is an :class:`APIError`."""
        from ..cli_options import UsageError, check_fits_context

        context, n = self.served.context_length, len(prompt_ids)
        param = "messages" if endpoint == "chat" else "prompt"
        if n == 0:
            raise APIError("the prompt is empty (0 tokens)", param=param)
        try:
            check_fits_context(n, context, self.allow_overflow)
        except UsageError as exc:
            raise APIError(str(exc), param=param, code="context_length_exceeded") from None
        max_new = settings.max_tokens or self.default_max_tokens
        if not self.allow_overflow:  # cut the reply where the context ends (finish_reason "length")
            max_new = min(max_new, context - n)
        if max_new < 1:
            raise APIError(
                f"the prompt ({n} tokens) fills the model's whole context of {context}: no room for a reply",
                param=param,
                code="context_length_exceeded",
            )
        sampling = SamplingParams(
            max_new,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=settings.seed,
            stop_token_ids=self._stop_ids,
        )
        return Job(request_id, endpoint, list(prompt_ids), settings.config, sampling, settings.stop)

    def submit(self, job: Job) -> asyncio.Future:
        """Queue ``job`` for the worker; the future resolves to its :class:`Outcome` (or fails with a 503
        :class:`APIError` when the server shuts down first)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.closing:
            future.set_exception(shutting_down_error())
            return future
        with self._lock:
            self._waiting[future] = (job, loop)
        future.add_done_callback(self._forget)
        self._worker.submit(self._run, job, future, loop)
        return future

    def _forget(self, future: asyncio.Future) -> None:
        with self._lock:
            self._waiting.pop(future, None)

    # ---- on the worker thread ------------------------------------------------------------

    def _stopped(self, job: Job) -> bool:
        return job.cancelled.is_set() or self._closing.is_set()

    def _run(self, job: Job) -> Outcome:
        from ..hf import enable

        if self._stopped(job):
            outcome = Outcome("", len(job.prompt_ids), 0, FINISH_CANCELLED, 0.0, 0.0)
            self._log(job, outcome)
            return outcome
        enable(self.served.model, job.config)
        start = self._prefill(job)
        if start is None:  # stopped between two prefill chunks
            outcome = Outcome("", len(job.prompt_ids), 0, FINISH_CANCELLED, 0.0, 0.0)
            self._log(job, outcome)
            return outcome
        reply = ReplyText(self.served.tokenizer, job.stop)

        def on_token(_: int, token: int) -> bool:
            piece = reply.push(token)
            if piece and job.on_text is not None:
                job.on_text(piece)
            return not (reply.stopped or self._stopped(job))

        result = decode(self.served.model, start, [job.sampling], on_token=on_token)
        rest = reply.finish()
        if rest and job.on_text is not None:
            job.on_text(rest)
        reason = result.finish_reasons[0]
        if reply.stopped or reason == FINISH_STOP:
            finish = "stop"
        elif reason == FINISH_LENGTH:
            finish = "length"
        else:
            finish = FINISH_CANCELLED
        outcome = Outcome(
            reply.text, len(job.prompt_ids), len(result.tokens[0]), finish, result.prefill_s, result.decode_s
        )
        self._log(job, outcome)
        return outcome

    def _prefill(self, job: Job):
        """The prompt's :class:`~delta_attn.generation.Prefilled`, or None if the job was stopped meanwhile.

        In chunks, one :func:`delta_attn.chunked_prefill` call per chunk (carrying the cache and the Δ
        state, so the result is the one-call chunked prefill's), checking between chunks whether to stop.
        """
        import torch

        from ..chunked import chunked_prefill
        from ..generation import Prefilled

        if not self.chunk_size:  # --chunk-size 0 asks for one forward: not prefill's chunked "auto"
            return prefill(self.served.model, [job.prompt_ids], chunk_size=None)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self._device)
        n, step = ids.shape[1], self.chunk_size
        t0 = time.perf_counter()
        out = None
        with torch.inference_mode():
            for s in range(0, n, step):
                if self._stopped(job):
                    return None
                out = chunked_prefill(
                    self.served.model,
                    ids[:, s : s + step],
                    chunk_size=step,
                    past_key_values=None if out is None else out.past_key_values,
                    state=None if out is None else out.state,
                    prompt_len=n,
                )
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return Prefilled(out.past_key_values, out.logits, None, time.perf_counter() - t0)

    def _log(self, job: Job, outcome: Outcome) -> None:
        rate = outcome.completion_tokens / outcome.decode_s if outcome.decode_s > 0 else 0.0
        LOG.info(
            "%s %s: %d prompt tokens, prefill %.0f ms, %d tokens decoded at %.1f tokens/s, finish %s; Δ: %s; %s",
            job.request_id,
            job.endpoint,
            outcome.prompt_tokens,
            outcome.prefill_s * 1000,
            outcome.completion_tokens,
            rate,
            outcome.finish_reason,
            describe_settings(job.config),
            prefill_label(self.chunk_size),
            extra={"job": job, "outcome": outcome},
        )


def _fail_shutting_down(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(shutting_down_error())
