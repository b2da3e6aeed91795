"""Driving the `sss` CLI in tests, one command at a time against one database file.

:class:`Trial` runs commands in process (typer's CliRunner) and knows the right arguments of
the setup steps; :func:`check_refused` asserts the project's rule for a refused step: exit 1,
one line on stderr naming the problem, and every table exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel
from typer.testing import CliRunner

from engine.clock import VirtualClock
from simulator.cli import app
from simulator.crm import s2s
from simulator.crm.db import make_engine

runner = CliRunner()
def all_rows(url: str, *, create: bool = True) -> dict[str, list]:
    """Every row of every table of the database at ``url``, in a stable order."""
    engine = make_engine(url, create=create)
    try:
        with engine.connect() as conn:
            return {t.name: sorted(map(tuple, conn.execute(sa_select(t)).all()), key=repr)
                    for t in SQLModel.metadata.sorted_tables}
    finally:
        engine.dispose()


ADMIN = "admin"
TENANT_ADMIN = "admin@contoso.onmicrosoft.com"
PASSWORD = "Pa55word!"
ROOT = "crm.contoso.com"


@dataclass
class Trial:
    url: str
    dir: Path

    def sss(self, *args: str):
        return runner.invoke(app, [*args, "--db", self.url])

    def ok(self, *args: str):
        result = self.sss(*args)
        assert result.exit_code == 0, (args, result.output, result.stderr)
        return result

    @property
    def engine(self):
        return make_engine(self.url)

    def pfx(self, name: str = "crm") -> str:
        return str(self.dir / f"{name}.pfx")

    def cer(self, name: str = "crm") -> str:
        return str(self.dir / f"{name}.cer")

    # the steps, with the right arguments unless overridden
    def org_init(self):
        return self.ok("org", "init", "--name", "Contoso", "--admin-email", "admin@contoso.com")

    def tenant_create(self):
        return self.ok(*self.TENANT)

    TENANT = ("tenant", "create", "--name", "Contoso", "--domain", "contoso.onmicrosoft.com", "--admin", TENANT_ADMIN)

    def cert_new(self, name: str = "crm", days: int = 30, *extra: str):
        return self.ok("cert", "new", "--subject", f"CN={ROOT}", "--days", str(days), "--password", PASSWORD,
                       "--out", str(self.dir), "--name", name, *extra)

    def cert_install(self, **kw: str):
        opts = {"--certificate-file": self.pfx(), "--password": PASSWORD, "--certificate-type": "S2STokenIssuer",
                "--service-account": "CONTOSO\\crmasync", "--store-find-type": "FindBySubjectDistinguishedName",
                "--as": ADMIN}
        opts.update({k if k.startswith("--") else "--" + k.replace("_", "-"): v for k, v in kw.items()})
        args = [a for kv in opts.items() for a in kv if kv[1] is not None]
        return self.sss("cert", "install", *args, "--update-crm")

    def configure(self, **kw: str):
        opts = {"--root-domain-name": ROOT, "--private-key-password": PASSWORD, "--cer-file-path": self.cer(),
                "--pfx-file-path": self.pfx(), "--organization-name": "Contoso", "--o365-admin-email": TENANT_ADMIN,
                "--as": ADMIN}
        opts.update({"--" + k.replace("_", "-"): v for k, v in kw.items()})
        return self.sss("s2s", "configure", *[a for kv in opts.items() for a in kv])

    def snapshot(self) -> dict[str, list]:
        """Every row of every table (the identity state and the clock included)."""
        return all_rows(self.url)

    def clock(self) -> VirtualClock:
        with Session(self.engine) as session:
            return s2s.load_clock(session)


def refused(trial: Trial, result, *needles: str) -> str:
    assert result.exit_code == 1, (result.output, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    assert "Traceback" not in result.output + result.stderr
    for needle in needles:
        assert needle.lower() in err.lower(), err
    return err


def check_refused(trial: Trial, run, *needles: str) -> str:
    before = trial.snapshot()
    err = refused(trial, run(), *needles)
    assert trial.snapshot() == before, "a refused step changed the database"
    return err


PROFILE = "Exchange Online"


def setup_to_s2s(trial: Trial) -> Trial:
    """Steps 1.1-1.3 done: organization, tenant, a 365-day certificate installed and registered."""
    trial.org_init()
    trial.tenant_create()
    trial.cert_new("crm", 365)
    assert trial.cert_install().exit_code == 0
    assert trial.configure().exit_code == 0
    return trial
