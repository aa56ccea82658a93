"""Durations as people write them in settings: 24h, 90m, 3600s, 2d, or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    """Seconds from '24h', '90m', '3600s', '2d' or a bare number; ValueError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a duration: give seconds, or a number with s, m, h or d (24h)")
    return float(m.group(1)) * _UNITS[m.group(2)]
