"""``--rope-scaling yarn:FACTOR[:ORIGINAL]`` (issue 15: an exploratory row past a model's trained context).

A tiny Qwen2 GGUF (random weights, written here) loaded with YaRN: the scaling is in its config, its rotary
embedding is YaRN's (checked against a float64 reference of the paper's formula) and differs from the unscaled
one at long positions, the model cache keeps the unscaled model, the length guard allows factor × the trained
context, and eval records carry the scaling so that resume and the report never mix scaled and unscaled runs.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from delta_attn import models
from delta_attn.cli_options import UsageError, check_fits_context
from delta_attn.models.rope import RopeScaling, RopeScalingError, check_applied, check_model_type, parse_rope_scaling
from tiny_gguf import write_tiny_gguf

CONTEXT = 3000  # the tiny GGUF's trained context


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of a fresh tiny Qwen2 GGUF of context 3000, its cache folder root)."""
    root = tmp_path_factory.mktemp("rope-gguf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(models.CACHE_ENV, str(root / "cache"))
        yield write_tiny_gguf(root / "tiny-qwen2.gguf", context=CONTEXT, layers=2), root / "cache"


def yarn_reference(head_dim: int, base: float, factor: float, original: int) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, cos/sin scale) of YaRN in float64, from the paper (arXiv:2309.00071, §3.2-3.4):
    dimensions rotating more than β_fast=32 times over the original context keep their frequency, those rotating
    less than β_slow=1 times are divided by the factor, a linear ramp between; attention scaled by 0.1·ln(s)+1."""
    dims = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    theta = base**-dims

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over `original` positions
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(dim_of(32)), 0), min(math.ceil(dim_of(1)), head_dim - 1)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
    inv_freq = theta / factor * ramp + theta * (1 - ramp)
    return inv_freq, 0.1 * math.log(factor) + 1.0


def rotary(model, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(1, len(positions), 1, dtype=torch.float32)
    with torch.no_grad():
        return model.model.rotary_emb(x, torch.tensor([positions]))


# ---------------------------------------------------------------------------------------------
# the option


def test_parse_rope_scaling(seed):
    rng = random.Random(seed)
    factor, original = round(rng.uniform(1.1, 16), 3), rng.randrange(512, 1 << 20)
    assert parse_rope_scaling("none") is None
    assert parse_rope_scaling(f"yarn:{factor}") == RopeScaling("yarn", factor, None)
    scaling = parse_rope_scaling(f"yarn:{factor}:{original}")
    assert scaling == RopeScaling("yarn", factor, original) and scaling.spec == f"yarn:{factor:g}:{original}"
    assert scaling.context_length == int(factor * original)
    assert parse_rope_scaling(f"yarn:{factor}").resolved(original) == scaling
    assert scaling.resolved(original + 1) == scaling  # an explicit original is kept
    bad = {
        "linear:2": "unknown rope scaling type 'linear'",
        "yarn": "expected yarn:FACTOR",
        "yarn:4:8:9": "expected yarn:FACTOR",
        "yarn:four": "factor must be a number",
        "yarn:1": "must be a finite number > 1",
        f"yarn:{rng.uniform(0, 1):.3f}": "must be a finite number > 1",
        "yarn:inf": "must be a finite number > 1",
        "yarn:4:32k": "original context must be an integer",
        "yarn:4:0": "original context must be a positive integer",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_rope_scaling(text)


def test_bad_rope_scaling_is_a_usage_error_before_anything_loads(tmp_path, run_cli, no_model_load):
    for text, message in (("dynamic:2", "unknown rope scaling type 'dynamic'"), ("yarn:0.5", "> 1")):
        rc, err = run_cli(["eval", "ruler", "--rope-scaling", text, "--out", tmp_path / "r"])
        assert rc == 2 and "--rope-scaling" in err and message in err, err
    rc, err = run_cli(["serve", "--rope-scaling=yarn:4"])  # the server does not take it (it would be ignored)
    assert rc == 2 and "unrecognized arguments: --rope-scaling" in err, err


# ---------------------------------------------------------------------------------------------
# loading


def test_yarn_on_the_tiny_gguf_is_the_papers(tiny, seed):
    path, _ = tiny
    factor = round(random.Random(seed).uniform(2, 8), 2)
    scaled, _ = models.load_model(str(path), device="cpu", rope_scaling=RopeScaling("yarn", factor))
    plain, _ = models.load_model(str(path), device="cpu")
    rope = scaled.config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("yarn", factor, CONTEXT)
    assert scaled.config.max_position_embeddings == int(factor * CONTEXT)
    assert plain.config.rope_parameters["rope_type"] == "default" and plain.config.max_position_embeddings == CONTEXT
    for a, b in zip(scaled.parameters(), plain.parameters()):  # the weights are the same, only RoPE changes
        assert torch.equal(a, b)

    head_dim = scaled.config.hidden_size // scaled.config.num_attention_heads
    inv_freq, mscale = yarn_reference(head_dim, rope["rope_theta"], factor, CONTEXT)
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq.double(), inv_freq, rtol=1e-6, atol=0)
    assert scaled.model.rotary_emb.attention_scaling == pytest.approx(mscale, rel=1e-12)

    rng = random.Random(seed + 1)
    far = sorted(rng.sample(range(CONTEXT, int(factor * CONTEXT)), 8))  # past the trained context
    cos, sin = rotary(scaled, far)
    angles = torch.tensor(far, dtype=torch.float64)[:, None] * inv_freq[None]
    angles = torch.cat([angles, angles], -1)
    # float32 angles of ~2e4 rad carry ~2e-3 rad of rounding: the tolerance of a float32 RoPE at these positions
    torch.testing.assert_close(cos[0].double(), angles.cos() * mscale, atol=5e-3, rtol=0)
    torch.testing.assert_close(sin[0].double(), angles.sin() * mscale, atol=5e-3, rtol=0)
    cos0, _ = rotary(plain, far)
    assert (cos[0] - cos0[0]).abs().max() > 0.5  # the stretched low frequencies are far from the trained ones


def test_the_model_cache_keeps_the_unscaled_model(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "fresh.gguf", context=CONTEXT)
    scaling = RopeScaling("yarn", 4.0)
    first, _ = models.load_cpu_model(path, rope_scaling=scaling)  # no cache yet: de-quantised, cached, re-read
    assert first.config.rope_parameters["rope_type"] == "yarn"
    sha = models.file_sha256(path)
    folder = tmp_path / "cache" / "models" / sha[:16]
    config_text = (folder / "config.json").read_text()
    saved = json.loads(config_text)
    assert saved["rope_parameters"]["rope_type"] == "default" and saved["max_position_embeddings"] == CONTEXT
    assert models._manifest_problem(folder, sha) is None
    again, _ = models.load_cpu_model(path, rope_scaling=scaling)  # from the cache folder, scaled at load
    plain, _ = models.load_cpu_model(path)
    assert again.model.rotary_emb.rope_type == "yarn" and plain.model.rotary_emb.rope_type == "default"
    assert (folder / "config.json").read_text() == config_text and models._manifest_problem(folder, sha) is None
    torch.testing.assert_close(again.model.rotary_emb.inv_freq, first.model.rotary_emb.inv_freq, rtol=0, atol=0)


def _hf_folder(path, **config):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kwargs = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    model = Qwen2ForCausalLM(Qwen2Config(**kwargs, num_key_value_heads=1, max_position_embeddings=1024, **config))
    model.save_pretrained(path)
    return path


def test_a_hugging_face_folder_is_scaled_at_load_and_left_alone(tmp_path):
    folder = _hf_folder(tmp_path / "qwen")
    before = (folder / "config.json").read_bytes()
    info = models.model_info(folder, rope_scaling=RopeScaling("yarn", 2.0, 512))
    assert (info.context_length, info.trained_context, info.rope_spec) == (1024, 1024, "yarn:2:512")
    loaded = models.load_cpu_model(folder, rope_scaling=RopeScaling("yarn", 2.0, 512))[0]
    rope = loaded.config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("yarn", 2.0, 512)
    assert loaded.config.max_position_embeddings == 1024 and (folder / "config.json").read_bytes() == before

    scaled = _hf_folder(tmp_path / "scaled", rope_parameters={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(RopeScalingError, match="already scales its RoPE"):
        models.model_info(scaled, rope_scaling=RopeScaling("yarn", 4.0))
    assert models.model_info(scaled).context_length == 1024  # without the option it loads as configured


def test_a_model_without_rope_parameters_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(RopeScalingError, match="GPT2Config has no rope_parameters"):
        check_model_type("gpt2", "some.gguf")
    check_model_type("qwen2", "qwen.gguf")  # Qwen2 takes it
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=64))
    with pytest.raises(RopeScalingError, match="did not apply --rope-scaling yarn:4"):
        check_applied(gpt2, RopeScaling("yarn", 4.0), "gpt2")


# ---------------------------------------------------------------------------------------------
# the length guard, the records, resume and the report


def test_the_length_guard_allows_factor_times_the_trained_context(tiny, tmp_path, run_cli, no_model_load):
    path, _ = tiny
    info = models.model_info(str(path), rope_scaling=RopeScaling("yarn", 2.0))
    assert (info.context_length, info.trained_context, info.rope_spec) == (2 * CONTEXT, CONTEXT, "yarn:2:3000")
    assert info.model_id == models.model_info(str(path)).model_id  # same file: the scaling is a separate setting
    check_fits_context(5000, info.context_length, False, note=info.context_note)
    with pytest.raises(UsageError, match=r"7000 tokens exceed the model's context of 6000 \(YaRN factor 2 over the"):
        check_fits_context(7000, info.context_length, False, note=info.context_note)
    argv = ["eval", "ruler", "--model", path, "--tasks", "niah_multivalue", "--out", tmp_path / "r"]
    rc, err = run_cli([*argv, "--lengths", "7000", "--rope-scaling", "yarn:2"])
    assert rc == 2 and "7000 tokens exceed the model's context of 6000 (YaRN factor 2 over the trained 3000)" in err
    # within the scaled context: past the guard (a 1-second time limit stops before the model loads)
    rc, err = run_cli([*argv, "--lengths", "5000", "--rope-scaling", "yarn:2", "--time-limit", "1"])
    assert rc == 0 and "lengths up to 6000 tokens are allowed" in err and "exploratory" in err, err


def test_generate_past_the_trained_context(tiny, tmp_path, run_cli):
    path, _ = tiny
    rng = random.Random()
    prompt = tmp_path / "long.txt"
    prompt.write_text(" ".join(rng.choice(["magic", "the", "number", "is", "seven"]) for _ in range(1400)))
    rc, _, err = run_cli(["generate", prompt, "--model", path, "--max-new-tokens", "2"], with_stdout=True)
    assert rc == 2 and "exceed the model's context of 3000" in err, err
    argv = ["generate", prompt, "--model", path, "--max-new-tokens", "2", "--rope-scaling", "yarn:2"]
    rc, _, err = run_cli([*argv, "--window", "64", "--sink", "8", "--gamma", "16"], with_stdout=True)
    assert rc == 0, err


def _ruler(run_cli, path, out, *more):
    argv = ["eval", "ruler", "--model", path, "--tasks", "niah_multivalue", "--samples", "1", "--methods", "dense"]
    argv += [*more, "--batch-size", "1", "--out", out, "--no-progress", "--no-summary"]
    rc, _, err = run_cli(argv, with_stdout=True)
    assert rc == 0, err
    return err


def test_records_carry_the_scaling_and_resume_keeps_it_apart(tiny, tmp_path, run_cli):
    path, _ = tiny
    out = tmp_path / "r"
    _ruler(run_cli, path, out, "--lengths", "2048,4096", "--rope-scaling", "yarn:2")
    records = [json.loads(line) for line in (out / "ruler.jsonl").read_text().splitlines()]
    (run,) = [r for r in records if r["record"] == "run"]
    assert (run["rope_scaling"], run["context_length"], run["trained_context"]) == ("yarn:2:3000", 6000, 3000)
    samples = [r for r in records if r["record"] == "sample"]
    assert sorted(r["length"] for r in samples) == [2048, 4096]
    assert all(r["config"]["rope_scaling"] == "yarn:2:3000" for r in samples)

    err = _ruler(run_cli, path, out, "--lengths", "2048", "--rope-scaling", "yarn:2:3000")  # the same setting
    assert "nothing to do" in err, err
    err = _ruler(run_cli, path, out, "--lengths", "2048")  # unscaled: the scaled record is not reused
    assert "not reusing 1 record(s) of method 'dense': they differ in rope_scaling (yarn:2:3000 vs –)" in err, err
    records = [json.loads(line) for line in (out / "ruler.jsonl").read_text().splitlines()]
    plain = [r for r in records if r["record"] == "sample" and "rope_scaling" not in r["config"]]
    assert [r["length"] for r in plain] == [2048]
    assert "rope_scaling" not in [r for r in records if r["record"] == "run"][-1]
    err = _ruler(run_cli, path, out, "--lengths", "2048")
    assert "nothing to do" in err, err

    report = tmp_path / "RESULTS.md"
    rc, _, err = run_cli(["eval", "report", "--inputs", out, "--out", report, "--resamples", "99"], with_stdout=True)
    assert rc == 0, err
    text = report.read_text()
    # the scaled rows are labelled; the unscaled setting keeps the plain name (and its comparisons and targets)
    assert "dense (rope_scaling yarn:2:3000)" in text and "| dense |" in text and "rope_scaling –" not in text
    assert "**Rope scaling**: none, yarn:2:3000" in text


def test_analysis_settings_carry_the_scaling(tiny):
    from argparse import Namespace

    from delta_attn.eval.cli_common import prompt_settings

    path, _ = tiny
    args = Namespace(seed=0, task="niah_single_1", length=4096, samples=2, reserve=128)
    scaled = prompt_settings(args, models.model_info(str(path), rope_scaling=RopeScaling("yarn", 2.0)), torch.float32)
    plain = prompt_settings(args, models.model_info(str(path)), torch.float32)
    assert scaled["rope_scaling"] == "yarn:2:3000" and "rope_scaling" not in plain
    assert {k: v for k, v in scaled.items() if k != "rope_scaling"} == plain
