"""``delta-attn serve`` under stress, as a real process on 127.0.0.1 (issue 18): Ctrl-C and SIGTERM with
requests in flight, a 48 MB body, a client that leaves a non-streaming request, and 1,000 malformed
requests.

The served model is a tiny random Llama (2 layers, d = 32) with a byte-level tokenizer of 259 tokens,
written to a temporary folder, so that a server starts in the time of its imports and a reply can run
for as long as a test needs (a 65,536-token context). One server process is shared by the module's tests;
the Ctrl-C test starts its own. Every loop is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

STOP_RUNS = 10  # Ctrl-C / SIGTERM cycles, each with a stream and a plain request in flight
BODY_LIMIT = 4 * 1024 * 1024  # the server's default --max-body
FUZZ_REQUESTS = 1000
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SERVER_OPTIONS = ["--window", "16", "--sink", "4", "--gamma", "8", "--tail", "8", "--chunk-size", "32"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A Hugging Face model folder: random tiny Llama + byte-level BPE tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-served-model")
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=65536,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@dataclass
class Server:
    proc: subprocess.Popen
    url: str = ""
    lines: queue.Queue = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if match := re.search(pattern, line):
                return match
        while time.monotonic() < deadline and (self.proc.poll() is None or not self.lines.empty()):
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no stderr line matching {pattern!r} within {timeout} s:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, float]:
        """(exit status, seconds from the signal to the exit)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return rc, time.monotonic() - start


def start_server(folder: Path, *options: str) -> Server:
    proc = subprocess.Popen(
        [sys.executable, "-m", "delta_attn.cli", "serve", str(folder), "--port", "0", *SERVER_OPTIONS, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = Server(proc)
    threading.Thread(target=lambda: [server.lines.put(x) for x in iter(proc.stderr.readline, "")], daemon=True).start()
    server.url = server.wait_for(r" at (http://127\.0\.0\.1:\d+)/v1 ")[1]
    return server


@pytest.fixture(scope="module")
def server(tiny_folder):
    served = start_server(tiny_folder, "--max-tokens", "4")
    yield served
    rc, _ = served.stop()
    assert rc == 0, served.stderr()
    assert "Traceback" not in served.stderr(), served.stderr()


def _error(response: httpx.Response) -> dict:
    """The OpenAI error object of ``response`` (checked to be exactly that shape)."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---------------------------------------------------------------------------------------------
# Ctrl-C / SIGTERM


def _stream_events(url: str, body: dict, first_text: threading.Event, into: dict) -> None:
    events: list[str] = []
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
            into["status"] = response.status_code
            for line in response.iter_lines():  # ends cleanly only if the stream is closed properly
                if line:
                    events.append(line)
                if len(events) >= 2:
                    first_text.set()
        into["events"] = events
    except httpx.HTTPError as exc:
        into["error"] = repr(exc)
    finally:
        first_text.set()


def _plain(url: str, body: dict, into: dict) -> None:
    try:
        into["response"] = httpx.post(url + "/v1/completions", json=body, timeout=30)
    except httpx.HTTPError as exc:
        into["error"] = repr(exc)


def test_ctrl_c_and_sigterm_with_requests_in_flight_exit_0_within_2_s(tiny_folder):
    """10 of 10: a streaming reply is running and a plain request waits; the signal stops the server in < 2 s
    with exit status 0, the stream ends with an OpenAI error event (properly closed), the plain request
    gets a 503 OpenAI error body, and nothing is logged but one line per request."""
    body = {"prompt": "Once upon a time", "max_tokens": 60000, "temperature": 0}
    outcomes = []
    for run in range(STOP_RUNS):
        sig = signal.SIGINT if run % 2 == 0 else signal.SIGTERM
        served = start_server(tiny_folder)
        try:
            first_text, streamed, plain = threading.Event(), {}, {}
            threads = [
                threading.Thread(
                    target=_stream_events, args=(served.url, {**body, "stream": True}, first_text, streamed)
                ),
                threading.Thread(target=_plain, args=(served.url, body, plain)),
            ]
            threads[0].start()
            assert first_text.wait(30), served.stderr()
            threads[1].start()
            for _ in range(200):  # until the plain request waits in the queue behind the stream
                if httpx.get(served.url + "/health", timeout=5).json()["pending"] == 2:
                    break
                time.sleep(0.01)
            rc, seconds = served.stop(sig)
            for t in threads:
                t.join(30)
        finally:
            if served.proc.poll() is None:
                served.proc.kill()
        log = served.stderr()
        outcomes.append((signal.Signals(sig).name, rc, round(seconds, 2)))
        assert rc == 0 and seconds < 2.0, (outcomes, log)
        assert "error" not in streamed and "error" not in plain, (streamed, plain)
        last = json.loads(streamed["events"][-1].removeprefix("data: "))
        assert last["error"]["code"] == "server_shutting_down", streamed["events"][-3:]
        assert plain["response"].status_code == 503, plain["response"].text
        assert _error(plain["response"])["code"] == "server_shutting_down"
        assert "Traceback" not in log and "terminate called" not in log, log
        assert log.rstrip().endswith("delta-attn serve: stopped"), log
    print(f"stop runs (signal, exit status, seconds): {outcomes}")


# ---------------------------------------------------------------------------------------------
# request bodies


HEALTH_POLLER = """
import http.client, sys, time
host, port = sys.argv[1], int(sys.argv[2])
conn = http.client.HTTPConnection(host, port, timeout=5)
print("ready", flush=True)
for _ in range(3000):  # bounded; ends when stdin closes
    start = time.monotonic()
    conn.request("GET", "/health")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    print(time.monotonic() - start, flush=True)
    time.sleep(0.01)
"""


def _start_health_poller(url: str) -> subprocess.Popen:
    """A separate small process timing ``GET /health`` (this test process is busy sending bodies: its own
    timings would measure its GIL, not the server)."""
    host, port = url.removeprefix("http://").split(":")
    poller = subprocess.Popen(
        [sys.executable, "-c", HEALTH_POLLER, host, port], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert poller.stdout.readline().strip() == "ready", poller.stderr.read()
    return poller


def _stop_health_poller(poller: subprocess.Popen) -> list[float]:
    poller.kill()
    out, err = poller.communicate(timeout=10)
    return [float(x) for x in out.split()]


def _raw_post(url: str, headers: str, body_chunks, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send a request over a plain socket while reading the answer: (the response bytes, seconds until its
    status line). The body goes in from another thread, which stops when the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    start = time.monotonic()
    sock.sendall(headers.encode("latin-1"))

    def send_body() -> None:
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed: the rest is not wanted
            pass

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    answer, first = b"", None
    try:
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
            first = first or time.monotonic() - start
    finally:
        sock.close()
    return answer, first if first is not None else float("inf")


def _length(answer: bytes) -> int:
    match = re.search(rb"(?i)content-length: (\d+)", answer)
    return int(match[1]) if match else 0


def _parse_raw(answer: bytes) -> tuple[int, dict]:
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload[: _length(answer)])


def test_a_48_mb_body_gets_413_at_once_while_health_keeps_answering(server):
    size = 48 * 1024 * 1024
    poller = _start_health_poller(server.url)
    time.sleep(0.3)
    try:
        chunk = b"x" * 65536
        declared = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n"
        )
        answer, seconds = _raw_post(server.url, declared, (chunk for _ in range(size // len(chunk))))
        status, body = _parse_raw(answer)
        assert status == 413 and seconds < 1.0, (status, seconds, answer[:300])
        assert body["error"]["code"] == "request_too_large" and str(BODY_LIMIT) in body["error"]["message"]

        # the same body in chunks, without a Content-Length: refused once the bytes received pass the limit
        chunked = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        framed = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(size // len(chunk)))
        answer, seconds = _raw_post(server.url, chunked, framed)
        status, body = _parse_raw(answer)
        assert status == 413 and seconds < 1.0, (status, seconds, answer[:300])

        # what the openai client and httpx do: send it all, then read the answer
        response = httpx.post(server.url + "/v1/completions", content=b"x" * size, timeout=30)
        assert response.status_code == 413 and _error(response)["code"] == "request_too_large"
        time.sleep(0.3)
    finally:
        latencies = _stop_health_poller(poller)
    assert len(latencies) > 10, latencies
    worst = max(latencies)
    print(f"/health while 48 MB bodies came in: {len(latencies)} requests, worst {worst * 1000:.1f} ms")
    assert worst < 0.1, sorted(latencies)[-5:]


def test_a_body_at_the_limit_is_read_and_answered(server):
    """Just under 4 MiB: parsed, tokenised off the event loop and answered (here: longer than the context)."""
    prompt = "ab" * ((BODY_LIMIT - 100) // 2)
    response = httpx.post(server.url + "/v1/completions", json={"prompt": prompt}, timeout=60)
    assert response.status_code == 400 and _error(response)["code"] == "context_length_exceeded", response.text
    over = httpx.post(server.url + "/v1/completions", json={"prompt": prompt + "x" * 200}, timeout=60)
    assert over.status_code == 413


@pytest.mark.parametrize(
    "raw, code",
    [
        (b'{"messages": [{"role": "user", "content": "\\ud800 hi"}]}', "invalid_unicode"),
        (b'{"prompt": "a\\udfff"}', "invalid_unicode"),
        (b'{"prompt": "x", "user": {"\\ud83d": 1}}', "invalid_unicode"),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json"),
        (b'{"prompt": "x", "metadata": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}", "invalid_json"),
    ],
    ids=["surrogate-content", "surrogate-prompt", "surrogate-key", "nested-100k", "nested-100"],
)
def test_lone_surrogates_and_deep_nesting_are_400(server, raw, code):
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    response = httpx.post(server.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400, response.text
    assert _error(response)["code"] == code
    line = server.wait_for(rf"{response.headers.get('x-request-id', '')}.*-> 400 ", timeout=10)[0]
    assert "\n" not in line.strip()


def test_a_non_streaming_client_that_leaves_frees_the_worker(server):
    body = {"prompt": "Once upon a time", "max_tokens": 60000, "temperature": 0}
    pattern = r"cmpl-\S+ completion: \d+ prompt tokens, .* (\d+) tokens decoded .* finish cancelled"
    before = len(re.findall(pattern, server.stderr()))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=1.0)  # gives up after a second
    for _ in range(200):
        cancelled = re.findall(pattern, server.stderr())
        if len(cancelled) > before:
            break
        time.sleep(0.05)
    assert len(cancelled) == before + 1, server.stderr()
    assert int(cancelled[-1]) < 60000
    for _ in range(100):
        if httpx.get(server.url + "/health").json()["pending"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["pending"] == 0
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 2


# ---------------------------------------------------------------------------------------------
# fuzz

FIELDS = {  # field -> (accepts this value?) of the endpoints' schemas; the fuzzer breaks one or more
    "model": lambda v: v is None or v == "tiny-served",
    "max_tokens": lambda v: v is None or (type(v) is int and 1 <= v < 2**31),
    "temperature": lambda v: v is None or (type(v) in (int, float) and 0 <= v <= 2),
    "top_p": lambda v: v is None or (type(v) in (int, float) and 0 < v <= 1),
    "seed": lambda v: v is None or (type(v) is int and 0 <= v < 2**63),
    "stream": lambda v: v is None or type(v) is bool,
    "stop": lambda v: (
        v is None
        or (type(v) is str and v != "")
        or (type(v) is list and len(v) <= 4 and all(type(s) is str and s != "" for s in v))
    ),
    "n": lambda v: v is None or v == 1,
    "delta": lambda v: v is None or _delta_accepts(v),
}


def _delta_accepts(value) -> bool:
    """Whether DeltaConfig takes these overrides (the fuzzer only sends ones it refuses)."""
    from delta_attn import DeltaConfig

    if not isinstance(value, dict):
        return False
    try:
        DeltaConfig(window=16, sink=4, gamma=8, tail=8).replace(**value)
    except Exception:  # noqa: BLE001 - any refusal
        return False
    return True


def _random_text(rng: random.Random, n: int) -> str:
    pools = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x590, 0x6FF),
        (0x4E00, 0x4FFF),
        (0x1F300, 0x1F64F),
        (0x300, 0x36F),
        (0xD800, 0xDFFF),
        (0x0, 0x1F),
        (0xFFF0, 0xFFFF),
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.choice(
        ["null", "bool", "int", "bigint", "float", "str", "list", "dict", "deep"]
        if depth < 3
        else ["int", "str", "null"]
    )
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-(2**40), 2**40)
    if kind == "bigint":
        return rng.choice([1, -1]) * 10 ** rng.randint(10, 400)
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), float("nan"), float("inf"), -0.0, 1e308 * 10, 2.5])
    if kind == "str":
        return _random_text(rng, rng.choice([0, 1, 5, 50, 2000]))
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "dict":
        return {_random_text(rng, rng.randint(0, 8)): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    value = rng.choice([[], {}, "x"])
    for _ in range(rng.choice([10, 70, 400])):  # json.dumps itself stops near 1,000 levels (see _fuzz_request)
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _broken_value(rng: random.Random, name: str):
    """A random JSON value that ``name`` does not accept."""
    for _ in range(100):
        value = _random_json(rng)
        if name == "delta" and rng.random() < 0.5:
            field = rng.choice(["gamma", "window", "sink", "tail", "mode", "interp", "dense_layers", "gama"])
            value = {field: _random_json(rng)}
            if field != "gama" and rng.random() < 0.3:
                value[field] = rng.choice([0, -1, 10**20, 2**31, "big", 1.5, [1], True])
        try:
            accepted = FIELDS[name](value)
        except Exception:  # noqa: BLE001 - e.g. NaN comparisons: not accepted
            accepted = False
        if not accepted:
            return value
    return "not a valid value"


def _messages(rng: random.Random):
    message = {"role": rng.choice(["user", "system", "assistant"]), "content": _random_text(rng, rng.randint(1, 40))}
    if rng.random() < 0.3:  # break the message itself
        message[rng.choice(["role", "content", "name"])] = _random_json(rng)
    return [message] * rng.randint(1, 3)


def _fuzz_request(rng: random.Random) -> tuple[str, bytes, str]:
    """(path, body bytes, what was broken): never a request that can run long."""
    path = rng.choice(["/v1/chat/completions", "/v1/completions"])
    shape = rng.random()
    if shape < 0.2:  # anything at all as the body
        value = _random_json(rng)
        raw = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        return path, raw, "random body"
    if shape < 0.25:  # nested deeper than json.dumps goes
        depth = rng.choice([100, 1000, 5000, 100_000])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        raw = b'{"prompt": "x", "max_tokens": 1, "user": ' + opener * depth + b"1" + closer * depth + b"}"
        return path, raw, f"nested {depth} deep"
    if shape < 0.3:  # not JSON / not UTF-8 / cut short
        good = json.dumps({"prompt": "hi", "max_tokens": 1}).encode()
        raw = rng.choice(
            [good[: rng.randint(0, len(good) - 1)], b"\xff\xfe\x00" + good, os.urandom(rng.randint(1, 200))]
        )
        return path, raw, "bytes"
    chat = path == "/v1/chat/completions"
    body: dict = {"max_tokens": 1}
    body["messages" if chat else "prompt"] = _messages(rng) if chat else _random_text(rng, rng.randint(1, 40))
    broken = rng.sample(sorted(FIELDS), rng.randint(1, 3))
    for name in broken:
        body[name] = _broken_value(rng, name)
    if rng.random() < 0.2:
        body[_random_text(rng, rng.randint(1, 12))] = _random_json(rng)  # an unknown field too
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return path, raw, f"fields {broken}"


def test_1000_malformed_requests_get_openai_4xx_never_a_500(server, seed):
    print(f"fuzz seed {seed} (DELTA_ATTN_TEST_SEED={seed} replays it)")
    rng = random.Random(seed)
    failures, statuses = [], {}
    with httpx.Client(timeout=30) as client:
        for i in range(FUZZ_REQUESTS):
            path, raw, what = _fuzz_request(rng)
            response = client.post(server.url + path, content=raw, headers={"content-type": "application/json"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500 or response.status_code == 200:
                failures.append((i, path, what, response.status_code, response.text[:200], raw[:200]))
            else:
                _error(response)
    print(f"statuses: {dict(sorted(statuses.items()))}")
    assert not failures, f"seed {seed}: {failures[:5]}"
    assert sum(statuses.values()) == FUZZ_REQUESTS and set(statuses) <= {400, 404, 413}
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
    assert answer.status_code == 200
    assert "Traceback" not in server.stderr()
