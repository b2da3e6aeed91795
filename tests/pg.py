"""A throwaway PostgreSQL server for the tests, on a Unix socket in a temporary folder.

``SSS_TEST_POSTGRES_URL`` points the tests at an existing server instead. Otherwise the server
binaries of a local PostgreSQL installation are used (Debian: the ``postgresql`` package); as
root, the server runs as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

PORT = 55432


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def unavailable_reason() -> str | None:
    if os.environ.get("SSS_TEST_POSTGRES_URL"):
        return None
    if _bindir() is None:
        return "no PostgreSQL server binaries found (install Debian's postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@contextmanager
def postgres_server():
    """Yields a SQLAlchemy URL of an empty database on a fresh server; stops it afterwards."""
    url = os.environ.get("SSS_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = _bindir()
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="sss-pg-"))
    data = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    options = f"-k {base} -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={base}&port={PORT}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
