"""Benchmarks and GPU checks: ``delta-attn bench layer`` (:mod:`.layer`) and ``python -m delta_attn.bench.check``."""
