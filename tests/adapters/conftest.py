"""Shared fixtures of the adapter tests."""
import pytest

import lateint_kernels as lk


class _Spy:
    """Counts calls of a lateint_kernels function (the switch must reach the kernels)."""

    def __init__(self, monkeypatch, name):
        self.n = 0
        orig = getattr(lk, name)

        def wrapped(*a, **k):
            self.n += 1
            return orig(*a, **k)

        monkeypatch.setattr(lk, name, wrapped)


@pytest.fixture
def spy(monkeypatch):
    """spy(name): a counter of calls to lateint_kernels.<name> for this test (`.n`)."""
    return lambda name: _Spy(monkeypatch, name)
