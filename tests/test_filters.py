"""The blocked LTI scan behind `ema` / `abg` against a plain Python loop (random inputs: the ``seed`` fixture)."""

from __future__ import annotations

import pytest
import torch

from delta_attn.filters import abg_system, ema_system, initial_state, lti_scan


def loop_scan(z, m, k, s_prev):
    s = s_prev.clone()
    outs = []
    for t in range(z.shape[-2]):
        s = torch.einsum("rs,...sd->...rd", m, s) + k.view(-1, 1) * z[..., t, :].unsqueeze(-2)
        outs.append(s[..., 0, :])
    return torch.stack(outs, dim=-2), s


@pytest.mark.parametrize("system", ["ema0.5", "ema0.95", "abg0.1", "abg0.9"])
@pytest.mark.parametrize("t", [1, 127, 128, 129, 700])
def test_blocked_scan_matches_loop(system, t, seed):
    m, k = ema_system(float(system[3:])) if system.startswith("ema") else abg_system(float(system[3:]), 0.02, 0.001)
    z = torch.randn(2, 3, t, 5, dtype=torch.float64)
    s0 = initial_state(torch.randn(2, 3, 5, dtype=torch.float64), m.shape[0])
    x, s = lti_scan(z, m, k, s0)
    x_ref, s_ref = loop_scan(z, m, k, s0)
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_scan_splits_like_a_stream(seed):
    m, k = abg_system(0.2, 0.02, 0.0013)
    z = torch.randn(1, 1, 500, 4, dtype=torch.float64)
    s0 = initial_state(z[..., 0, :], 3)
    x, _ = lti_scan(z, m, k, s0)
    x1, s1 = lti_scan(z[..., :333, :], m, k, s0)
    x2, _ = lti_scan(z[..., 333:, :], m, k, s1)
    torch.testing.assert_close(torch.cat([x1, x2], dim=-2), x, rtol=1e-12, atol=1e-12)


def test_first_output_is_first_input(seed):
    for m, k in (ema_system(0.7), abg_system(0.1, 0.005, 0.0002)):
        z = torch.randn(3, 10, 6, dtype=torch.float64)
        x, _ = lti_scan(z, m, k, initial_state(z[..., 0, :], m.shape[0]))
        torch.testing.assert_close(x[..., 0, :], z[..., 0, :], rtol=0, atol=1e-14)
