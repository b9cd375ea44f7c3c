"""Offline data: public-domain texts installed from PyPI (see :mod:`delta_attn.data.texts`)."""
