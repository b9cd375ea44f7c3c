"""The model being served and the one worker thread that runs it.

Concurrency: **requests are queued, not batched.** One worker thread (transformers' serving
``InferenceThread``) owns the model and runs one request at a time, first come first served; every
request prefills into its own fresh KV cache, so caches are never shared or interleaved, and each
request's answer is exactly what it would be alone. A request's Δ settings are switched on
(:func:`delta_attn.enable`) by the worker right before it runs, which is safe because nothing else
touches the model.

A client that goes away (``Job.cancel``) frees the worker at its next token: ``on_token`` returns
False and :func:`delta_attn.generation.generate` ends the sequence; a job cancelled while it waits in
the queue is skipped. A prefill already running finishes first (it is not split into steps that
could stop early).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DeltaConfig
from ..generation import FINISH_LENGTH, FINISH_STOP, SamplingParams, generate, stop_token_ids
from ..methods import describe_settings
from .errors import APIError
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
        from ..compat import serving_worker_thread

        self.served = served
        self.config = config
        self.chunk_size = chunk_size
        self.default_max_tokens = default_max_tokens
        self.allow_overflow = allow_overflow
        self._stop_ids = stop_token_ids(served.tokenizer)
        self._device = next(served.model.parameters()).device
        self._worker = serving_worker_thread()
        self._pending = 0  # jobs queued or running

    @property
    def pending(self) -> int:
        """Requests queued or running (``/health`` reports it)."""
        return self._pending

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
        """Queue ``job`` for the worker; the future resolves to its :class:`Outcome`."""
        self._pending += 1
        future = self._worker.async_submit(self._run, job)
        future.add_done_callback(lambda _: setattr(self, "_pending", self._pending - 1))
        return future

    # ---- on the worker thread ------------------------------------------------------------

    def _run(self, job: Job) -> Outcome:
        from ..hf import enable

        if job.cancelled.is_set():
            outcome = Outcome("", len(job.prompt_ids), 0, FINISH_CANCELLED, 0.0, 0.0)
            self._log(job, outcome)
            return outcome
        enable(self.served.model, job.config)
        reply = ReplyText(self.served.tokenizer, job.stop)

        def on_token(_: int, token: int) -> bool:
            piece = reply.push(token)
            if piece and job.on_text is not None:
                job.on_text(piece)
            return not (reply.stopped or job.cancelled.is_set())

        result = generate(
            self.served.model, [job.prompt_ids], job.sampling, chunk_size=self.chunk_size, on_token=on_token
        )
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
