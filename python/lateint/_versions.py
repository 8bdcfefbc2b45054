"""Release numbers of the libraries the drop-ins patch, as comparable tuples."""
from __future__ import annotations

import warnings


def version_tuple(v: str) -> tuple:
    """"1.6.0" -> (1, 6, 0); "6.2.0rc1" -> (6, 2, 0): the digits of the first three parts."""
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def require_tested(module: str, library: str, v: str, tested, allow_untested: bool) -> None:
    """The drop-ins' gate on a version of `library` outside `tested`: RuntimeError unless
    `allow_untested`, then a warning (attributed to the caller of `enable`)."""
    if v in tested:
        return
    if not allow_untested:
        raise RuntimeError(f"{module} was tested with {library} {', '.join(tested)}; installed: {v}. "
                           "Pass enable(allow_untested=True) to switch on anyway")
    warnings.warn(f"{module}: {library} {v} is untested (tested: {', '.join(tested)})", stacklevel=4)
