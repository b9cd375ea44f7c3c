"""``delta-attn serve``: an OpenAI-compatible HTTP server whose prompts are prefilled with Δ attention.

Built on transformers' serving stack (``pip install 'delta-attn[serve]'`` pulls ``transformers[serving]``:
FastAPI, uvicorn, openai, pydantic). What is kept and what is replaced, and why:

* kept: the request handlers' OpenAI response builders and request schemas (:mod:`.handlers`,
  :mod:`.requests`), their message conversion; FastAPI and uvicorn.
* replaced: the model manager (its attention whitelist refuses ``"delta"``, and GGUF configs, whose
  ``architectures`` is None, fail in its loader with a ``TypeError``) by :mod:`.loading`; the generate
  path (``model.generate``: one-shot prefill, a process-wide seed, stop strings kept in the reply) by
  :func:`delta_attn.generation.generate` with chunked Δ prefill; ``build_server`` by :mod:`.app`
  (OpenAI error bodies, one served model, a request-body limit, parsing off the event loop); the
  ``InferenceThread`` by the engine's own worker thread, which a shutdown can stop (:mod:`.engine`).

Modules: :mod:`.cli` (the command), :mod:`.loading`, :mod:`.engine` (queue and worker),
:mod:`.requests` (validation), :mod:`.handlers`, :mod:`.text` (stop strings, incremental decoding),
:mod:`.errors`, :mod:`.app`. Nothing heavy is imported here: ``delta-attn --help`` stays fast.
"""
