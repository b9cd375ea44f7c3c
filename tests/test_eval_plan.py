"""``delta-attn eval plan``: the model's shape read without weights, the decode replay against the real decode
loop, calibration recovering known rates from records the model itself generates, and the command on CPU."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import re

import numpy as np
import pytest
import torch

from delta_attn.eval import plan as P
from delta_attn.models import ModelShape, model_shape, shape_from_gguf
from delta_attn.models.registry import NAMED_MODELS, local_copy
from tiny_gguf import write_tiny_gguf


def _random_shape(rng: random.Random) -> ModelShape:
    kv = rng.randint(1, 4)
    heads = kv * rng.randint(1, 4)
    head_dim = rng.choice([16, 32, 64, 128])
    return ModelShape(
        layers=rng.randint(2, 40),
        hidden=heads * head_dim,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        ffn=rng.randint(64, 9000),
        vocab=rng.randint(300, 160000),
    )


# ---------------------------------------------------------------------------------------------
# the shape


def test_shape_from_a_hugging_face_folder(tmp_path):
    rng = random.Random()
    want = _random_shape(rng)
    config = {
        "model_type": "llama",
        "num_hidden_layers": want.layers,
        "hidden_size": want.hidden,
        "num_attention_heads": want.heads,
        "num_key_value_heads": want.kv_heads,
        "intermediate_size": want.ffn,
        "vocab_size": want.vocab,
        "max_position_embeddings": 4096,
    }
    if rng.random() < 0.5:  # head_dim is optional (hidden / heads), given by some configs
        config["head_dim"] = want.head_dim
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_shape(str(tmp_path)) == want
    # a multimodal config nests the text model
    nested = tmp_path / "vl"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"model_type": "x", "text_config": config}))
    assert model_shape(str(nested)) == want
    del config["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="intermediate_size"):
        model_shape(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 8, "num_local_experts": 8}))
    with pytest.raises(ValueError, match="mixture-of-experts"):
        model_shape(str(tmp_path))


def test_shape_from_a_gguf_header(tmp_path):
    rng = random.Random()
    kv = rng.choice([1, 2])
    heads, layers = kv * rng.randint(1, 3), rng.randint(1, 3)
    hidden = heads * rng.choice([8, 16])
    path = write_tiny_gguf(tmp_path / "t.gguf", layers=layers, hidden=hidden, heads=heads, kv_heads=kv)
    shape = model_shape(str(path))
    import gguf

    reader = gguf.GGUFReader(str(path))  # the gguf package's full parse is the reference
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    assert shape == ModelShape(layers, hidden, heads, kv, hidden // heads, 2 * hidden, vocab)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"nope" * 8)
    with pytest.raises(ValueError, match="not a GGUF file"):
        model_shape(str(not_gguf))


@pytest.mark.parametrize("name", list(NAMED_MODELS))
def test_named_models_know_their_shape_without_their_file(name, cache_dir, monkeypatch):
    from delta_attn.models import registry

    real = local_copy(NAMED_MODELS[name])
    monkeypatch.setattr(registry, "installed_wheel_path", lambda m: None)  # as on a machine without the file
    assert registry.local_copy(NAMED_MODELS[name]) is None
    shape = model_shape(name)
    assert shape == NAMED_MODELS[name].shape and shape.layers == NAMED_MODELS[name].num_layers
    if real is not None:  # the static entry is the file's header (checked where the file is)
        assert shape_from_gguf(real) == shape


# ---------------------------------------------------------------------------------------------
# the decode replay


class _Cache:
    """Tracks which sequences are in the batch, as DynamicCache.batch_select_indices does."""

    def __init__(self, seqs):
        self.seqs = seqs

    def batch_select_indices(self, idx):
        self.seqs = self.seqs[idx]


class _ScriptedModel(torch.nn.Module):
    """Sequence i emits its stop token at loop iteration lives[i], a plain token before; records batch rows."""

    STOP, OTHER, VOCAB = 3, 5, 8

    def __init__(self, lives, cache):
        super().__init__()
        self.lives, self.cache, self.rows, self.step = torch.tensor(lives), cache, [], 0

    def logits_for(self, seqs, iteration):
        tok = torch.where(self.lives[seqs] == iteration, self.STOP, self.OTHER)
        return torch.nn.functional.one_hot(tok, self.VOCAB).float()

    def forward(self, input_ids, use_cache=True, past_key_values=None, **kw):
        self.step += 1
        self.rows.append(input_ids.shape[0])
        assert input_ids.shape[0] == len(self.cache.seqs)
        return type("Out", (), {"logits": self.logits_for(self.cache.seqs, self.step + 1)[:, None]})()


def test_decode_rows_replays_the_decode_loop():
    from delta_attn.decoding import Prefilled, SamplingParams, decode

    rng = random.Random()
    for _ in range(20):
        lives = [rng.randint(1, 40) for _ in range(rng.randint(1, 24))]
        cache = _Cache(torch.arange(len(lives)))
        model = _ScriptedModel(lives, cache)
        start = Prefilled(cache, model.logits_for(torch.arange(len(lives)), 1), None)
        params = [SamplingParams(1000, stop_token_ids=frozenset({_ScriptedModel.STOP})) for _ in lives]
        res = decode(model, start, params)
        assert [len(t) + 1 for t in res.tokens] == lives and all(res.hit_stop)
        assert P.decode_rows(lives) == model.rows and res.decode_steps == len(model.rows)


# ---------------------------------------------------------------------------------------------
# calibration


METHODS = ["dense", "sparse", "recompute", "delta", "delta_g16"]


def _hw(rng: random.Random) -> P.Hardware:
    return P.Hardware(
        tflops=rng.uniform(50, 800),
        attn_tflops=rng.uniform(50, 800),
        layer_overhead_ms=rng.uniform(0.1, 5),
        step_layer_ms=rng.uniform(0.1, 3),
        hbm_tbs=rng.uniform(0.5, 8),
    )


def _write_run(path, rng, hw, *, model, run_id, date, batches, concurrency=1.0, prefill_tokens=None, recorded=None):
    """An ``eval ruler`` result file whose batch timings the cost model with ``hw`` gives (× ``concurrency``), or
    ``recorded`` (prefill_s, decode_s) per batch; returns each batch's lives and own (prefill, decode) seconds."""
    from delta_attn.eval import ruler
    from delta_attn.methods import parse_methods

    named = NAMED_MODELS[model]
    methods = parse_methods(METHODS, dict(window=rng.choice([64, 256, 2048]), sink=rng.choice([0, 64]), gamma=64))
    prefill_tokens = prefill_tokens or rng.choice([16384, 65536, 262144])
    header = {
        "record": "run",
        "run_id": run_id,
        "date": date.isoformat(),
        "model_id": named.model_id,
        "model_sha256": named.sha256,
        "model_layers": named.num_layers,
        "device_name": "test GPU",
        "options": {"prefill_tokens": prefill_tokens, "reserve": 128},
        "methods": {m.name: m.config_dict() for m in methods},
    }
    lines, written, own = [header], [], []
    tasks = list(ruler.TASKS)
    for k, (method, length, rows) in enumerate(batches):
        m = next(x for x in methods if x.name == method)
        n = length - 128
        chosen = [rng.choice(tasks) for _ in range(rows)]
        lives = [rng.randint(1, ruler.TASKS[t].max_new_tokens) for t in chosen]
        stopped = [life < ruler.TASKS[t].max_new_tokens or rng.random() < 0.5 for t, life in zip(chosen, lives)]
        steps = max(lives) - 1
        written.append(lives)
        pre = P.prefill_work(named.shape, m.config, n, rows, max(1, prefill_tokens // length)).prefill_s(hw)
        dec = P.decode_work(named.shape, n, P.decode_rows(lives)).decode_s(hw)
        own.append((pre, dec))
        pre, dec = recorded[k] if recorded is not None else (pre * concurrency, dec * concurrency)
        timing = {"size": rows, "prefill_s": pre, "decode_s": dec, "steps": steps}
        for t, life, stop in zip(chosen, lives, stopped):
            gen = life - 1 if stop else life
            lines.append(
                {"record": "sample", "task": t, "length": length, "method": method, "run_id": run_id,
                 "prompt_tokens": n, "gen_tokens": gen, "hit_stop": stop, "max_new_tokens": 128, "batch": timing}
            )  # fmt: skip
    with gzip.open(path, "at", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return written, own


def _random_batches(rng, count):
    return [(rng.choice(METHODS), rng.choice([2048, 4096, 8192, 16384]), rng.randint(1, 24)) for _ in range(count)]


def test_calibration_recovers_the_rates_that_made_the_records(tmp_path):
    rng = random.Random()
    true = _hw(rng)
    t0 = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
    lives = []
    for i, model in enumerate(["smollm2-135m", "qwen2.5-coder-1.5b"]):
        lives += _write_run(
            tmp_path / f"r{i}.jsonl.gz",
            rng,
            true,
            model=model,
            run_id=f"run{i}",
            date=t0 + dt.timedelta(days=i),  # never overlapping: concurrency 1
            batches=_random_batches(rng, 40),
        )[0]
    cal = P.calibrate([tmp_path], start=P.Hardware())
    assert len(cal.batches) == 80 and {b.concurrency for b in cal.batches} == {1.0}
    assert [b.lives for b in cal.batches] == lives  # batches regrouped, stop tokens counted
    # Each rate within 1 % where the records determine it: where its term is ≥ 2 % of the recorded times it
    # enters. A smaller term (HBM bandwidth under a large per-step overhead: under 1 % of the decode time in about
    # one draw of a hundred) is pulled towards the starting rate by fit_coefs' prior, so there the test is what
    # matters for a plan: the rate's error moves the predicted times by < 0.02 %.
    features = np.array([b.prefill_mix for b in cal.batches] + [b.decode_mix for b in cal.batches])
    seconds = np.array([b.prefill_s for b in cal.batches] + [b.decode_s for b in cal.batches])
    true_coefs = np.array(true.prefill_coefs() + true.decode_coefs())
    fitted = np.array(cal.hw.prefill_coefs() + cal.hw.decode_coefs())
    names = ("tflops", "attn_tflops", "layer_overhead_ms", "step_layer_ms", "hbm_tbs")  # the coefficients' order
    for i, name in enumerate(names):
        used = (seconds > 0) & (features[:, i] > 0)
        share = float(np.mean(features[used, i] * true_coefs[i] / seconds[used]))
        error = abs(fitted[i] / true_coefs[i] - 1)
        if share >= 0.02:
            assert error < 1e-2, (name, share, error)
        else:
            assert error * share < 2e-4, (name, share, error)
    pre, dec = P.relative_errors(cal)
    assert pre < 0.01 and dec < 0.01


def test_concurrent_runs_are_found_on_the_timeline(tmp_path):
    """Two runs that started together with the same batches shared the GPU all along (each batch took twice its
    own time); a third, the next day, ran alone. auto finds 2 and 1; a wrong --concurrency misfits."""
    rng = random.Random()
    true = _hw(rng)
    t0 = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
    shared = _random_batches(rng, 30)
    seed = rng.random()
    for run_id in ("a", "b"):  # the same seed: the same lives, hence the same timings
        _write_run(tmp_path / f"{run_id}.jsonl.gz", random.Random(seed), true, model="qwen2.5-coder-1.5b",
                   run_id=run_id, date=t0, batches=shared, concurrency=2.0, prefill_tokens=65536)  # fmt: skip
    _write_run(tmp_path / "c.jsonl.gz", rng, true, model="qwen2.5-coder-1.5b", run_id="c",
               date=t0 + dt.timedelta(days=1), batches=_random_batches(rng, 30))  # fmt: skip
    cal = P.calibrate([tmp_path])
    assert {b.run_id: b.concurrency for b in cal.batches if b.run_id != "c"} == {"a": 2.0, "b": 2.0}
    assert {b.concurrency for b in cal.batches if b.run_id == "c"} == {1.0}
    assert cal.hw.tflops == pytest.approx(true.tflops, rel=1e-2)
    assert cal.hw.step_layer_ms == pytest.approx(true.step_layer_ms, rel=1e-2)
    wrong = P.calibrate([tmp_path], concurrency=1)
    assert max(P.relative_errors(wrong)) > 0.1


def _time_sliced(runs):
    """A GPU shared by processes in equal time slices (processor sharing): ``runs`` = (start s, [phase work in
    seconds alone]) per process; returns every phase's duration, per process."""
    n = len(runs)
    phase, left = [0] * n, [ph[0] for _, ph in runs]
    begun, out = [None] * n, [[] for _ in runs]
    t = min(start for start, _ in runs)
    while True:
        active = [i for i in range(n) if runs[i][0] <= t and phase[i] < len(runs[i][1])]
        later = [runs[i][0] for i in range(n) if runs[i][0] > t]
        if not active and not later:
            return out
        if not active:
            t = min(later)
            continue
        for i in active:
            begun[i] = t if begun[i] is None else begun[i]
        rate = 1 / len(active)
        step = min([left[i] / rate for i in active] + [x - t for x in later])
        t += step
        for i in active:
            left[i] -= step * rate
            if left[i] <= 1e-12:
                out[i].append(t - begun[i])
                phase[i], begun[i] = phase[i] + 1, None
                if phase[i] < len(runs[i][1]):
                    left[i] = runs[i][1][phase[i]]


def test_calibration_on_a_time_sliced_gpu(tmp_path):
    """Three runs of different work share one GPU in time slices (one starts later): auto recovers the rates
    and predicts the recorded times far better than dividing by a concurrency."""
    rng = random.Random()
    true = _hw(rng)
    t0 = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
    plans = [(f"g{i}", rng.random(), _random_batches(rng, 25), i * rng.uniform(0, 30)) for i in range(3)]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    own = {}
    for run_id, seed, batches, _ in plans:  # the work each batch does alone (the same seed writes it again below)
        own[run_id] = _write_run(scratch / f"{run_id}.jsonl.gz", random.Random(seed), true, model="qwen2.5-coder-1.5b",
                                 run_id=run_id, date=t0, batches=batches, prefill_tokens=65536)[1]  # fmt: skip
    phases = [(offset, [x for pre_dec in own[run_id] for x in pre_dec]) for run_id, _, _, offset in plans]
    durations = _time_sliced(phases)
    records = tmp_path / "records"
    records.mkdir()
    for (run_id, seed, batches, offset), took in zip(plans, durations):
        recorded = list(zip(took[0::2], took[1::2]))
        _write_run(records / f"{run_id}.jsonl.gz", random.Random(seed), true, model="qwen2.5-coder-1.5b",
                   run_id=run_id, date=t0 + dt.timedelta(seconds=offset), batches=batches, prefill_tokens=65536,
                   recorded=recorded)  # fmt: skip
    cal = P.calibrate([records])
    assert max(b.concurrency for b in cal.batches) > 2.5
    alone = sum(b.work.prefill_s(cal.hw) + b.work.decode_s(cal.hw) for b in cal.batches)
    assert alone == pytest.approx(sum(p + d for run in own.values() for p, d in run), rel=0.03)
    auto_err = max(P.relative_errors(cal))
    mean = sum(b.concurrency * b.wall_s for b in cal.batches) / sum(b.wall_s for b in cal.batches)
    divided_err = max(P.relative_errors(P.calibrate([records], concurrency=mean)))
    assert auto_err < 0.1 and auto_err < divided_err / 2, (auto_err, divided_err)


def test_fit_keeps_rates_the_records_cannot_tell_and_stays_non_negative():
    rng = random.Random()
    prior = [rng.uniform(1, 2), rng.uniform(1, 2), rng.uniform(1, 2)]
    true = [rng.uniform(0.5, 3), rng.uniform(0.5, 3)]
    # the third unknown's feature is always 0: nothing to learn about it
    X = [[rng.uniform(0.1, 1), rng.uniform(0.1, 1), 0.0] for _ in range(50)]
    y = [a * true[0] + b * true[1] for a, b, _ in X]
    coefs = P.fit_coefs(X, y, prior)
    assert coefs[:2] == pytest.approx(true, rel=1e-2) and coefs[2] == pytest.approx(prior[2], rel=1e-6)
    # data that a negative coefficient would fit best: the fit clips it to 0 instead
    y2 = [max(1e-3, a * true[0] - 5 * b) for a, b, _ in X]
    assert min(P.fit_coefs(X, y2, prior)) >= 0


# ---------------------------------------------------------------------------------------------
# the command


def _minutes(out: str, title: str) -> dict:
    """The rows of one minutes table: method -> [per length ..., total]."""
    block = out.split(title, 1)[1].split("\n\n", 1)[0].split(":", 1)[1]
    rows = {}
    for line in block.strip().splitlines()[1:]:
        parts = line.split()
        if len(parts) < 2 or not re.fullmatch(r"[\d.]+", parts[-1]):
            break
        rows[parts[0]] = [float(x) for x in parts[1:]]
    return rows


def test_cli_plans_the_target_run_on_cpu(tmp_path, run_cli):
    rng = random.Random()
    true = _hw(rng)
    records = tmp_path / "records"
    records.mkdir()
    _write_run(records / "r.jsonl.gz", rng, true, model="qwen2.5-coder-1.5b", run_id="r",
               date=dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc), batches=_random_batches(rng, 30))  # fmt: skip
    methods = "dense,sparse,recompute,delta,delta_auto,delta_autod,delta_g16"
    argv = ["eval", "plan", "--model", "qwen2.5-coder-1.5b", "--lengths", "16K,32K", "--samples", "3"]
    rc, out, err = run_cli([*argv, "--methods", methods, "--calibrate", records], with_stdout=True)
    assert rc == 0, err
    assert "calibration: 30 batches" in out and "12 query / 2 KV heads × 128" in out
    table = _minutes(out, "GPU minutes, pessimistic")
    assert list(table) == [*methods.split(","), "total"]
    # the table is the plan of the calibrated model
    from delta_attn.eval.runner import parse_batch_sizes

    cal = P.calibrate([records])
    same = cal.batches
    tokens = max(len(b.lives) * b.length for b in same)
    from delta_attn.methods import parse_methods

    cells = P.plan(
        parse_methods(methods, dict(window=256, sink=64, gamma=64)),  # the command's --window --sink --gamma
        [16384, 32768],
        3,
        NAMED_MODELS["qwen2.5-coder-1.5b"].shape,
        cal.hw,
        batch_size=parse_batch_sizes(f"16384:{tokens // 16384},32768:{max(1, tokens // 32768)}"),
        prefill_tokens=max(b.prefill_tokens for b in same),
        typical_tokens=cal.typical_tokens["qwen2.5-coder-1.5b"],
    )
    want = sum(c.total_s for c in cells) / 60
    assert table["total"][-1] == pytest.approx(want, abs=0.051 + 0.001 * want)
    assert f"total ≈ {want:.1f} GPU min" in out
    # an uncalibrated plan of a local folder
    (tmp_path / "m").mkdir()
    shape = _random_shape(rng)
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "num_hidden_layers": shape.layers, "hidden_size": shape.hidden, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "intermediate_size": shape.ffn,
        "vocab_size": shape.vocab}))  # fmt: skip
    rc, out, err = run_cli(["eval", "plan", "--model", tmp_path / "m", "--lengths", "4096", "--samples", "2"],
                           with_stdout=True)  # fmt: skip
    assert rc == 0, err
    assert f"{shape.layers} layers" in out
    assert list(_minutes(out, "GPU minutes, typical")) == ["dense", "sparse", "recompute", "delta", "total"]


def test_cli_errors_name_the_problem(tmp_path, run_cli):
    rc, err = run_cli(["eval", "plan", "--lengths", "16Q"])
    assert rc == 2 and "16K" in err
    rc, err = run_cli(["eval", "plan", "--lengths", f"{random.randint(1, 383)}"])
    assert rc == 2 and "fewer than" in err and "--lengths" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run_cli(["eval", "plan", "--calibrate", empty])
    assert rc == 2 and "no .jsonl" in err
    rc, err = run_cli(["eval", "plan", "--tflops", "0"])
    assert rc == 2 and "tflops must be > 0" in err
    rc, err = run_cli(["eval", "plan", "--concurrency", "0.5", "--calibrate", empty])
    assert rc == 2 and "--concurrency" in err


def test_plan_scales_with_the_work():
    """More samples cost more, in proportion for the prefill; Δ at γ=64 prefills faster than dense at 16K on any
    shape and rates (the attention it saves outweighs the per-layer overhead at these sizes)."""
    rng = random.Random()
    shape, hw = _random_shape(rng), _hw(rng)
    hw.layer_overhead_ms = 0.0
    one = P.plan(["dense", "delta"], [16384], 4, shape, hw, batch_size=lambda L: 13)
    two = P.plan(["dense", "delta"], [16384], 8, shape, hw, batch_size=lambda L: 13)
    for a, b in zip(one, two):
        assert b.prefill_s == pytest.approx(2 * a.prefill_s, rel=1e-9)
        assert b.decode_s > a.decode_s and a.decode_typical_s <= a.decode_s
    assert one[1].prefill_s < one[0].prefill_s


def test_cli_plan_leaves_out_what_resume_records_hold(tmp_path, run_cli):
    """``--resume-from``: generations the records hold with the planned settings are not planned, exactly as a
    resumed eval ruler skips them; records of another window or dtype are not counted."""
    from delta_attn.eval.cli_ruler import ruler_configs
    from delta_attn.eval.runner import parse_batch_sizes
    from delta_attn.methods import parse_methods

    rng = random.Random()
    tasks, methods, samples = ["vt", "niah_single_1"], "dense,delta", rng.randint(3, 6)
    planned = parse_methods(methods, dict(window=256, sink=64, gamma=64))  # the command's defaults
    model_id = NAMED_MODELS["qwen2.5-coder-1.5b"].model_id
    same = ruler_configs(planned, model_id=model_id, dtype="bfloat16", reserve=128, seed=0)
    other_window = ruler_configs(parse_methods("delta", dict(window=512, sink=64, gamma=64)),
                                 model_id=model_id, dtype="bfloat16", reserve=128, seed=0)  # fmt: skip
    other_dtype = ruler_configs(planned, model_id=model_id, dtype="float32", reserve=128, seed=0)
    keys = [(t, 16384, i, m.name, 0) for t in tasks for i in range(samples) for m in planned]
    done = set(rng.sample(keys, rng.randint(1, len(keys) - 1)))
    records = []
    for t, L, i, m, s in keys:
        cfg = same[m] if (t, L, i, m, s) in done else rng.choice([other_dtype[m], other_window.get(m, other_dtype[m])])
        records.append({"record": "sample", "task": t, "length": L, "index": i, "method": m, "seed": s, "config": cfg})
    folder = tmp_path / "earlier"
    folder.mkdir()
    (folder / "ruler.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    argv = ["eval", "plan", "--model", "qwen2.5-coder-1.5b", "--lengths", "16K", "--samples", str(samples)]
    argv += ["--tasks", ",".join(tasks), "--methods", methods]
    rc, out, err = run_cli([*argv, "--resume-from", folder], with_stdout=True)
    assert rc == 0, err
    assert f"resumed: {len(done)} of the {len(keys)} generations are in the records and are not planned" in out
    assert "not reusing" in out  # the records of another window or dtype, with the reason
    cells = P.plan(planned, [16384], samples, NAMED_MODELS["qwen2.5-coder-1.5b"].shape, P.Hardware(), tasks=tasks,
                   batch_size=parse_batch_sizes(P.DEFAULT_BATCH_SPEC), done=done)  # fmt: skip
    want = sum(c.total_s for c in cells) / 60
    assert f"total ≈ {want:.1f} GPU min" in out
    assert [c.prompts for c in cells] == [sum((t, 16384, i, m.name, 0) not in done for t in tasks
                                              for i in range(samples)) for m in planned]  # fmt: skip
    rc, full, err = run_cli(argv, with_stdout=True)  # without the records: every generation is planned
    assert rc == 0, err
    assert "resumed:" not in full
    assert (
        _minutes(full, "GPU minutes, pessimistic")["total"][-1]
        >= _minutes(out, "GPU minutes, pessimistic")["total"][-1]
    )
