"""What every benchmark reports the same way: the machine's state and the JSON output."""

from __future__ import annotations

import json
import os
import sys
import time


def environment(started: float) -> dict:
    """How busy the machine was, which Python, and the wall time since ``started`` (perf_counter)."""
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def print_json(result: dict) -> None:
    json.dump(result, sys.stdout, indent=2)
    print()
