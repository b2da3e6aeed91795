"""Fixtures: a small organization, approved, tested and enabled, in a seeded sandbox."""

from __future__ import annotations

import pytest
from support import Org, build_org


@pytest.fixture
def org() -> Org:
    """alice, bob, the support queue and the admin: approved, tested & enabled (seed 0)."""
    o = build_org()
    yield o
    o.sb.close()


@pytest.fixture
def make_org():
    """A factory for variants of the organization (profile fields, org switches, seeds)."""
    made: list[Org] = []

    def factory(**kw) -> Org:
        o = build_org(**kw)
        made.append(o)
        return o

    yield factory
    for o in made:
        o.sb.close()
