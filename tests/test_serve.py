"""``delta-attn serve`` end to end: the real SmolLM2 behind a real server on a free loopback port (one
server for the module, in a thread), driven by the official ``openai`` client and by raw HTTP.

Answers are checked against :func:`delta_attn.generation.generate` run here on a second copy of the
model with the same Δ settings and chunk size: greedy answers and seeded samples must match token for
token. The server's Δ settings are small (window 16, γ 8, tail 8) so that the short prompts really go
through sparse + Δ rows, in two chunks of 32 tokens.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest
import uvicorn

from delta_attn import DeltaConfig, disable, enable
from delta_attn.generation import FINISH_STOP, SamplingParams, generate, stop_token_ids
from delta_attn.models import load_smollm2, model_info
from delta_attn.serve.app import build_app
from delta_attn.serve.engine import Engine, ServedModel

NAME = "smollm2-under-test"
CONFIG = DeltaConfig(window=16, sink=4, gamma=8, tail=8)
CHUNK = 32
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
COUNTING = "Count with me: 1, 2, 3,"


class _Records(logging.Handler):
    """Keeps the server's log records (one per request)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def job(self, request_id: str, timeout: float = 60.0) -> logging.LogRecord:
        """The record of the job ``request_id``, waiting for it to be written (the worker logs when done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records if getattr(r, "job", None) and r.job.request_id == request_id]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no log record for {request_id} within {timeout} s")


@dataclass
class Live:
    url: str  # http://127.0.0.1:PORT
    client: openai.OpenAI
    engine: Engine
    tokenizer: object
    reference: object  # another copy of the model, for delta_attn.generation.generate
    log: _Records

    def expected(self, prompt_ids, config, max_tokens, temperature=0.0, seed=None) -> tuple[str, int, str]:
        """(text, completion tokens, finish reason) that generate gives for this prompt and these settings."""
        enable(self.reference, config)
        params = SamplingParams(
            max_tokens, temperature=temperature, seed=seed, stop_token_ids=stop_token_ids(self.tokenizer)
        )
        result = generate(self.reference, [prompt_ids], params, chunk_size=CHUNK)
        finish = "stop" if result.finish_reasons[0] == FINISH_STOP else "length"
        tokens = result.tokens[0]
        return self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), finish

    def chat_ids(self, messages) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]


@pytest.fixture(scope="module")
def live():
    model, tokenizer = load_smollm2(device="cpu")
    reference, _ = load_smollm2(device="cpu")
    info = model_info()
    engine = Engine(
        ServedModel(model, tokenizer, NAME, info.context_length, info.num_layers),
        CONFIG,
        chunk_size=CHUNK,
        default_max_tokens=8,
    )
    log = _Records()
    logger = logging.getLogger("delta_attn.serve")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(build_app(engine), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield Live(url, client, engine, tokenizer, reference, log)
    server.should_exit = True
    thread.join(timeout=10)
    logger.removeHandler(log)
    logger.setLevel(level)
    disable(reference)


def _sse(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of a server-sent-event stream, checking the framing (``data: ...`` + blank line)."""
    events = response.text.split("\n\n")
    assert events[-1] == "", "a stream ends with a blank line"
    assert all(e.startswith("data: ") for e in events[:-1]), events
    return [e.removeprefix("data: ") for e in events[:-1]]


# ---------------------------------------------------------------------------------------------
# answers


def test_models_and_health(live):
    assert [m.id for m in live.client.models.list()] == [NAME]
    assert live.client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        live.client.models.retrieve("gpt-4")
    health = httpx.get(live.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model"] == NAME


def test_chat_greedy_equals_generate(live):
    answer = live.client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=10, temperature=0)
    ids = live.chat_ids(QUESTION)
    text, n, finish = live.expected(ids, CONFIG, 10)
    choice = answer.choices[0]
    assert (choice.message.content, choice.finish_reason, choice.message.role) == (text, finish, "assistant")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), n)
    assert answer.usage.total_tokens == len(ids) + n
    assert answer.id.startswith("chatcmpl-") and answer.model == NAME and answer.object == "chat.completion"
    assert "Paris" in text


def test_chat_stream_equals_non_stream_for_a_seed(live, seed):
    kwargs = dict(model=NAME, messages=QUESTION, max_tokens=8, temperature=1.0, seed=seed)
    whole = live.client.chat.completions.create(**kwargs)
    chunks = list(live.client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text, n, _ = live.expected(live.chat_ids(QUESTION), CONFIG, 8, temperature=1.0, seed=seed)
    assert (streamed, whole.usage.completion_tokens) == (text, n)  # a seed gives generate's sample


def test_completion_greedy_and_seeded_stream_equal_generate(live, seed):
    ids = live.tokenizer(COUNTING)["input_ids"]
    greedy = live.client.completions.create(model=NAME, prompt=COUNTING, max_tokens=8, temperature=0)
    text, n, finish = live.expected(ids, CONFIG, 8)
    assert (greedy.choices[0].text, greedy.usage.completion_tokens, greedy.choices[0].finish_reason) == (
        text,
        n,
        finish,
    )
    assert greedy.usage.prompt_tokens == len(ids) and greedy.object == "text_completion"

    kwargs = dict(model=NAME, prompt=COUNTING, max_tokens=8, temperature=1.2, top_p=0.9, seed=seed)
    whole = live.client.completions.create(**kwargs)
    streamed = "".join(c.choices[0].text for c in live.client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].text


def test_raw_http_stream_is_sse_ending_with_done(live):
    body = {"model": NAME, "messages": QUESTION, "max_tokens": 6, "temperature": 0}
    plain = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=120)
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")
    streamed = httpx.post(live.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _sse(streamed)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] == streamed.headers["x-request-id"]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == plain.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain.json()["usage"]


def test_stop_string_cuts_the_reply_streaming_or_not(live):
    body = {"model": NAME, "prompt": COUNTING, "max_tokens": 12, "temperature": 0}
    full = httpx.post(live.url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"pick another prompt: {full!r}"
    cut = httpx.post(live.url + "/v1/completions", json={**body, "stop": [stop, "never appears"]}, timeout=120).json()
    assert cut["choices"][0]["text"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    streamed = httpx.post(live.url + "/v1/completions", json={**body, "stop": stop, "stream": True}, timeout=120)
    chunks = [json.loads(e) for e in _sse(streamed)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[: full.index(stop)]


def test_delta_override_equals_generate_with_that_config(live):
    override = {"mode": "recompute", "gamma": 4, "window": 8, "dense_layers": [0, 1]}
    answer = live.client.chat.completions.create(
        model=NAME, messages=QUESTION, max_tokens=10, temperature=0, extra_body={"delta": override}
    )
    config = CONFIG.replace(**override)
    text, n, finish = live.expected(live.chat_ids(QUESTION), config, 10)
    assert (answer.choices[0].message.content, answer.usage.completion_tokens) == (text, n)
    assert live.log.job(answer.id).job.config == config  # the override ran ...
    plain = live.client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=2, temperature=0)
    assert live.log.job(plain.id).job.config == CONFIG  # ... for that request only


def test_four_concurrent_clients_get_their_sequential_answers(live, seed):
    topics = ("the sea", "a cat", "the moon", "bread")
    requests = [
        dict(model=NAME, messages=[{"role": "user", "content": f"Write about {t}."}], max_tokens=6, temperature=0.9)
        for t in topics
    ]
    for i, r in enumerate(requests):
        r["seed"] = (seed + i) % 2**31

    def ask(kwargs) -> tuple[str, int]:
        answer = live.client.chat.completions.create(**kwargs)
        return answer.choices[0].message.content, answer.usage.completion_tokens

    sequential = [ask(r) for r in requests]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(ask, requests))
    assert concurrent == sequential


def test_disconnect_mid_stream_frees_the_worker(live):
    body = {"model": NAME, "prompt": COUNTING, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", live.url + "/v1/completions", json=body) as response:
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # the first piece of text: hang up
    record = live.log.job(request_id)
    assert record.outcome.finish_reason == "cancelled"
    assert record.outcome.completion_tokens < 200
    after = live.client.completions.create(model=NAME, prompt=COUNTING, max_tokens=3, temperature=0)
    assert after.choices[0].finish_reason == "length" and after.usage.completion_tokens == 3
    assert live.engine.pending == 0 and httpx.get(live.url + "/health").json()["pending"] == 0


def test_one_log_line_per_request(live):
    answer = live.client.completions.create(model=NAME, prompt=COUNTING, max_tokens=3, temperature=0)
    record = live.log.job(answer.id)
    line = record.getMessage()
    assert "\n" not in line
    pattern = (
        rf"{answer.id} completion: {answer.usage.prompt_tokens} prompt tokens, prefill \d+ ms, 3 tokens decoded at "
        r"[\d.]+ tokens/s, finish length; Δ: delta streaming, sink 4, window 16, gamma 8, interp repeat, tail 8; "
        r"prefill in chunks of 32$"
    )
    assert re.fullmatch(pattern, line), line
    assert [r for r in live.log.records if getattr(r, "job", None) and r.job.request_id == answer.id] == [record]


# ---------------------------------------------------------------------------------------------
# bad input: an OpenAI error body with a 4xx status, and the server keeps serving

CHAT = "/v1/chat/completions"
COMPLETION = "/v1/completions"
OK_CHAT = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
OK_COMPLETION = {"model": NAME, "prompt": "Hi", "max_tokens": 2}


def _delta_error(**fields) -> str:
    """The message DeltaConfig itself gives for these fields."""
    try:
        CONFIG.replace(**fields)
    except (TypeError, ValueError) as exc:
        return str(exc)
    raise AssertionError(f"DeltaConfig accepts {fields}")


BAD = [
    # (path, body (bytes: sent as is), status, param, code, words in the message)
    (CHAT, b'{"model": "x", "messages": [', 400, None, "invalid_json", "not valid JSON"),
    (CHAT, b"[1, 2]", 400, None, "invalid_json", "must be a JSON object"),
    (COMPLETION, b"\xff\xfe", 400, None, "invalid_json", "not valid JSON"),
    (CHAT, {"model": NAME}, 400, "messages", None, "missing required field 'messages'"),
    (CHAT, {**OK_CHAT, "messages": "Hi"}, 400, "messages", None, "valid list"),
    (CHAT, {**OK_CHAT, "messages": []}, 400, "messages", None, "at least 1 item"),
    (
        CHAT,
        {**OK_CHAT, "messages": [{"role": "user"}, {"role": "user", "content": 3}]},
        400,
        "messages.1.content",
        None,
        "",
    ),
    (CHAT, {**OK_CHAT, "messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages.0.role", None, "wizard"),
    (CHAT, {**OK_CHAT, "messages": [{"content": "Hi"}]}, 400, "messages.0.role", None, "missing"),
    (COMPLETION, {"model": NAME}, 400, "prompt", None, "missing required field 'prompt'"),
    (COMPLETION, {**OK_COMPLETION, "prompt": [1, 2, 3]}, 400, "prompt", None, "valid string"),
    (COMPLETION, {**OK_COMPLETION, "prompt": ""}, 400, "prompt", None, "at least 1 character"),
    (CHAT, {**OK_CHAT, "model": "gpt-4"}, 404, "model", "model_not_found", "'gpt-4' does not exist"),
    (COMPLETION, {**OK_COMPLETION, "model": 7}, 400, "model", None, "valid string"),
    (CHAT, {**OK_CHAT, "max_tokens": 0}, 400, "max_tokens", None, "greater than or equal to 1"),
    (COMPLETION, {**OK_COMPLETION, "max_tokens": -5}, 400, "max_tokens", None, "greater than or equal to 1"),
    (CHAT, {**OK_CHAT, "max_completion_tokens": 0}, 400, "max_completion_tokens", None, "greater than or equal to 1"),
    (CHAT, {**OK_CHAT, "max_tokens": "8"}, 400, "max_tokens", None, "valid integer"),
    (CHAT, {**OK_CHAT, "max_tokens": 2.5}, 400, "max_tokens", None, "valid integer"),
    (CHAT, {**OK_CHAT, "max_tokens": True}, 400, "max_tokens", None, "valid integer"),
    (CHAT, {**OK_CHAT, "temperature": "hot"}, 400, "temperature", None, "valid number"),
    (CHAT, {**OK_CHAT, "temperature": -0.5}, 400, "temperature", None, "greater than or equal to 0"),
    (COMPLETION, {**OK_COMPLETION, "top_p": 0}, 400, "top_p", None, "greater than 0"),
    (COMPLETION, {**OK_COMPLETION, "seed": -1}, 400, "seed", None, "greater than or equal to 0"),
    (CHAT, {**OK_CHAT, "stream": "yes"}, 400, "stream", None, "valid boolean"),
    (CHAT, {**OK_CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None, "at most 4"),
    (COMPLETION, {**OK_COMPLETION, "stop": ""}, 400, "stop", None, "non-empty"),
    (CHAT, {**OK_CHAT, "temprature": 0.5}, 400, "temprature", None, "unknown field 'temprature'"),
    (CHAT, {**OK_CHAT, "n": 2}, 400, "n", "unsupported", "n=2 is not supported"),
    (COMPLETION, {**OK_COMPLETION, "logprobs": 3}, 400, "logprobs", "unsupported", "not supported"),
    (CHAT, {**OK_CHAT, "delta": 16}, 400, "delta", None, "valid dictionary"),
    (CHAT, {**OK_CHAT, "delta": {"gama": 16}}, 400, "delta", None, "unknown setting 'gama'"),
    (CHAT, {**OK_CHAT, "delta": {"gamma": 0}}, 400, "delta", None, _delta_error(gamma=0)),
    (COMPLETION, {**OK_COMPLETION, "delta": {"mode": "fast"}}, 400, "delta", None, _delta_error(mode="fast")),
    (COMPLETION, {**OK_COMPLETION, "delta": {"window": "big"}}, 400, "delta", None, _delta_error(window="big")),
    (CHAT, {**OK_CHAT, "delta": {"interp": "linear"}}, 400, "delta", None, "not causal"),
    (CHAT, {**OK_CHAT, "delta": {"dense_layers": [0, 30]}}, 400, "delta", None, "the model has 30 layers"),
    (CHAT, {**OK_CHAT, "delta": {"backend": "triton"}}, 400, "delta", None, "needs CUDA"),
    (
        COMPLETION,
        {**OK_COMPLETION, "prompt": "word " * 9000},
        400,
        "prompt",
        "context_length_exceeded",
        "exceed the model's context of 8192",
    ),
]


@pytest.mark.parametrize("path, body, status, param, code, words", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(live, path, body, status, param, code, words):
    if isinstance(body, bytes):
        response = httpx.post(live.url + path, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(live.url + path, json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code), error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert words in error["message"], error["message"]
    assert httpx.get(live.url + "/health").status_code == 200


def test_the_openai_client_raises_with_the_servers_message(live):
    with pytest.raises(openai.BadRequestError, match="max_tokens") as info:
        live.client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=0)
    assert info.value.code is None and info.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError, match="does not exist") as info:
        live.client.completions.create(model="davinci", prompt="Hi")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="DeltaConfig.gamma"):
        live.client.completions.create(model=NAME, prompt="Hi", extra_body={"delta": {"gamma": -1}})
    unknown_route = httpx.get(live.url + "/v1/engines")
    assert unknown_route.status_code == 404 and "error" in unknown_route.json()
    answer = live.client.completions.create(model=NAME, prompt="Hi", max_tokens=2, temperature=0)
    assert answer.usage.completion_tokens <= 2


def test_a_failure_inside_the_worker_is_a_500_and_the_server_goes_on(live, monkeypatch):
    import delta_attn.serve.engine as engine_module

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(engine_module, "decode", broken)
    plain = httpx.post(live.url + COMPLETION, json=OK_COMPLETION, timeout=60)
    assert plain.status_code == 500 and plain.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in plain.json()["error"]["message"]
    streamed = httpx.post(live.url + COMPLETION, json={**OK_COMPLETION, "stream": True}, timeout=60)
    assert json.loads(_sse(streamed)[-1])["error"]["type"] == "server_error"  # no [DONE] after a failure
    monkeypatch.undo()
    answer = live.client.completions.create(model=NAME, prompt="Hi", max_tokens=2, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")
