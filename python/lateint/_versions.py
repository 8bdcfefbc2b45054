"""Release numbers of the libraries the drop-ins patch, as comparable tuples."""
from __future__ import annotations


def version_tuple(v: str) -> tuple:
    """"1.6.0" -> (1, 6, 0); "6.2.0rc1" -> (6, 2, 0): the digits of the first three parts."""
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)
