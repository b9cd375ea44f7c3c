"""Shared test set-up: the ``seed`` fixture of randomized tests, the real tokenizer and model, the CLI runner.

``src`` and ``tests`` are on the import path through pyproject's ``[tool.pytest.ini_options] pythonpath``, so
tests import the helper modules (oracle.py, tiny_models.py, ranks.py) by name.

A randomized test takes ``seed``: a fresh seed per test run (or ``DELTA_ATTN_TEST_SEED`` to replay
one) that also seeds torch, random and numpy. When the test fails, its report shows the seed and the
command line to replay it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

SEED_ENV = "DELTA_ATTN_TEST_SEED"


@pytest.fixture
def seed(request) -> int:
    """A fresh random seed (``$DELTA_ATTN_TEST_SEED`` replays one); torch, random and numpy are seeded with it."""
    value = int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else int.from_bytes(os.urandom(4), "little") >> 1
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Put the seed of a failed randomized test into its report."""
    outcome = yield
    report = outcome.get_result()
    seeds = [value for key, value in item.user_properties if key == "seed"]
    if report.failed and seeds:
        report.sections.append(("seed", f"{SEED_ENV}={seeds[0]} pytest '{item.nodeid}'  # replays this failure"))


# ---------------------------------------------------------------------------------------------
# the bundled SmolLM2 (offline)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The bundled SmolLM2's tokenizer, loaded once per session (tokenizers are not changed by the tests)."""
    from delta_attn.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def smol():
    """``(model, tokenizer)`` of the bundled SmolLM2 on the CPU, once per test module: a module may switch the
    model to Δ attention without reaching other modules' tests."""
    from delta_attn.models import load_smollm2

    return load_smollm2(device="cpu")


@pytest.fixture(scope="module")
def ruler_builder(smol_tokenizer):
    """A RULER-style prompt builder (:class:`delta_attn.eval.ruler.PromptBuilder`) over the SmolLM2 tokenizer."""
    from delta_attn.eval import ruler

    return ruler.PromptBuilder(smol_tokenizer)


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command loads the model (user errors must be found before it loads)."""
    from delta_attn import models

    def trap(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(models, "load_smollm2", trap)
    monkeypatch.setattr(models, "load_model", trap)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(argv)`` -> (exit status, stderr) of ``delta-attn ARGV`` (``with_stdout=True``: (status, stdout,
    stderr)); argparse errors exit through SystemExit, and no traceback may reach stderr."""
    from delta_attn.cli import main

    def run(argv, *, with_stdout: bool = False) -> tuple:
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return (rc, out, err) if with_stdout else (rc, err)

    return run


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, empty delta-attn cache folder for the test (``$DELTA_ATTN_CACHE_DIR``)."""
    from delta_attn import models

    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    return root
