"""Shared test set-up: the helper modules on sys.path, and the ``seed`` fixture of randomized tests.

A randomized test takes ``seed``: a fresh seed per test run (or ``DELTA_ATTN_TEST_SEED`` to replay
one) that also seeds torch, random and numpy. When the test fails, its report shows the seed and the
command line to replay it.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import the helper module oracle.py

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
