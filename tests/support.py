"""The suite's organization: see :mod:`simulator.testing` (the pytest plugin builds the same one)."""

from simulator.testing import (  # noqa: F401  (re-exported for the test modules)
    ADMIN,
    ADMIN_ADDR,
    ALICE,
    BOB,
    CARL,
    FABRIKAM,
    LENA,
    START,
    STRANGER,
    SUPPORT,
    Org,
    build_org,
    msg,
    run,
)
