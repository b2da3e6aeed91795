"""The `sss` command."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from engine.clock import RealClock


def _typed_value(exc: ClickException, args: list[str]) -> str | None:
    """What the user typed for the option a BadParameter is about (the last time it is given), if found."""
    param = getattr(exc, "param", None)
    if type(exc).__name__ != "BadParameter" or param is None or not getattr(param, "opts", None):
        return None
    names = (*param.opts, *getattr(param, "secondary_opts", ()))
    found = None
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            found = args[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in names:
            found = arg.split("=", 1)[1]
    return found


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing option, a value of the wrong type) as one line on stderr, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help())
                sys.exit(0)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            message = exc.format_message()
            typed = _typed_value(exc, sys.argv[1:] if args is None else list(args))
            if typed is not None and message.startswith("Invalid value for "):
                message = f"Invalid value {typed!r} for " + message[len("Invalid value for "):]
            typer.echo("Error: " + where + " ".join(message.split()), err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


from simulator.cli_help import readable_help  # noqa: E402  (flags without "<bool>" in every --help)

app = typer.Typer(
    cls=readable_help(_OneLineErrors),
    add_completion=False,
    no_args_is_help=True,
    help="Simulated server-side synchronization between a CRM and Exchange Online.",
)


@app.callback()
def _root() -> None:
    """Simulated server-side synchronization between a CRM and Exchange Online."""


@app.command()
def demo(
    seed: int = typer.Option(1, min=0, help="Seed of the traffic; the same seed gives the same result."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    db: Path = typer.Option(Path("sss-demo.db"), help="Where to write the demo database (replaced each run)."),
    hours: float = typer.Option(24.0, min=0.1, max=24 * 30, help="Simulated hours to run."),
) -> None:
    """Build a small organization, run a day of seeded mail through the engine, and summarize."""
    from simulator.demo import Demo, print_summary

    console = Console(stderr=as_json)
    wall = RealClock()
    t0 = wall.now()

    async def go() -> dict:
        d = Demo(seed=seed, db_path=db, hours=hours)
        if not as_json:
            console.print(f"Demo database: {d.db_path}")
        await d.setup()
        total = hours * 3600
        start = d.sb.clock.now()
        if as_json:
            await d.run()
        else:
            with Progress(TextColumn("[bold]simulating"), BarColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn(), console=console, transient=False) as bar:
                task = bar.add_task("", total=total)

                def progress(now: datetime) -> None:
                    bar.update(task, completed=(now - start).total_seconds(), description=now.strftime("%a %H:%M"))

                await d.run(progress)
        s = d.summary((wall.now() - t0).total_seconds())
        d.sb.close()
        return s

    with _Refused():  # a --db that cannot hold the demo's database: one line, nothing removed
        summary = asyncio.run(go())
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        print_summary(console, summary)


# ------------------------------------------------------------------------------ the setup flow (SPEC 1.1-1.4)
# One command per step; the state between steps lives in the CRM database given by --db (identity
# service and the sandbox's virtual clock included). A refused step prints one line on stderr, exits 1
# and writes nothing.

org_app = typer.Typer(no_args_is_help=True, help="The CRM organization (setup step 1.1).")
tenant_app = typer.Typer(no_args_is_help=True, help="The Office 365 tenant, done by its administrator.")
cert_app = typer.Typer(no_args_is_help=True, help="S2S certificates: make one, install it (setup step 1.2).")
s2s_app = typer.Typer(no_args_is_help=True, help="Server-based authentication (setup steps 1.3, 1.4).")
clock_app = typer.Typer(no_args_is_help=True, help="The sandbox's virtual clock (certificates expire in it).")
app.add_typer(org_app, name="org")
app.add_typer(tenant_app, name="tenant")
app.add_typer(cert_app, name="cert")
app.add_typer(s2s_app, name="s2s")
app.add_typer(clock_app, name="clock")

DEFAULT_DB = "sss.db"


def _db_option():
    return typer.Option(DEFAULT_DB, "--db", envvar="SSS_DB", metavar="URL", callback=_usable_db,
                        help="The sandbox's CRM database: a SQLAlchemy URL, or a SQLite file path.")


def _usable_db(value: str) -> str:
    """--db as given, refused at once when it cannot be a sandbox's database: empty, a folder, a file
    of another kind (a usage error: one line, exit 2, nothing opened)."""
    from simulator.crm.db import file_problem
    from simulator.procedure import _sqlite_path

    if not value.strip():
        raise typer.BadParameter(f"it is empty; give a SQLite file path (e.g. {DEFAULT_DB}) or a SQLAlchemy URL")
    target = _sqlite_path(value)
    problem = file_problem(target) if isinstance(target, Path) else None
    if problem == "is a folder":
        raise typer.BadParameter(f"it is a folder; give a file in it, e.g. {target / DEFAULT_DB}")
    if problem:
        raise typer.BadParameter(f"it {problem}; give the sandbox's database file")
    return value


def _as_option():
    return typer.Option(..., "--as", metavar="USER",
                        help="The CRM user who runs the step (domain name, e.g. admin); needs System Administrator.")


def _engine(db: str, *, creates: bool = False):
    """The sandbox's database; one that does not exist is refused unless the command ``creates`` it
    (a mistyped --db would otherwise leave an empty database behind)."""
    from simulator.crm.db import make_engine, sqlite_url

    _claim(db, creates=creates)
    return make_engine(db if "://" in db else sqlite_url(db))


def _say_next(db: str) -> None:
    from simulator.cli_walkthrough import say_next

    say_next(db)


def _option_name(field: str | None, operation: str | None = None) -> str | None:
    """The option that sets ``field`` in the command of ``operation`` (declared by its input model)."""
    from simulator.crm.inputs import COMMON_FLAGS
    from simulator.crm.operations import OPERATIONS

    if not field:
        return None
    model = OPERATIONS[operation].model if operation else None
    if model is not None and field in model.model_fields:
        return model.flag(field)
    if field in COMMON_FLAGS:
        return COMMON_FLAGS[field]
    option = "--" + field.replace("_", "-")
    if model is None or option in _command_options(OPERATIONS[operation].cli or operation):
        return option
    # a field the command has no option for (the organization's default profile when applying
    # defaults) is the state the refusal is about, not something the user typed: no option named
    return None


def _command_options(command: str) -> set[str]:
    """The options of the ``sss`` command ``command`` (e.g. "tenant create")."""
    import typer.main

    cmd = typer.main.get_command(app)
    for word in command.split(" --")[0].split():
        cmd = cmd.commands[word]
    return {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}


class _Refused:
    """Turn a refused step into one line on stderr and exit code 1.

    ``operation`` is the operation the command runs (a key of ``OPERATIONS``): a refused field is
    named by the option its input model declares. ``derived`` names, for a field the command
    filled in itself, the option the user typed instead (a logon name taken from ``--email``), or
    None when the user typed none (a default): the line names what the user wrote.

    A database file the refused command started (:func:`_claim`) is removed: nothing written."""

    def __init__(self, operation: str | None = None, derived: dict[str, str | None] | None = None) -> None:
        self.operation = operation
        self.derived = derived or {}

    def __enter__(self) -> None:
        _STARTED.clear()
        return None

    def _remove_started(self) -> None:
        for path in _STARTED:
            if _as_new(path):  # another process may have written into it meanwhile: then it stays
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
        _STARTED.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        from sqlalchemy.exc import SQLAlchemyError

        from simulator.crm.admin import AdminError
        from simulator.crm.db import DatabaseError
        from simulator.exchange.persist import PersistError
        from simulator.identity import CertificateError, IdentityError

        if isinstance(exc, AdminError):
            text = str(exc)
            if exc.field and text.startswith(f"{exc.field}: "):
                text = text[len(exc.field) + 2:]
            if (exc.field or "") in self.derived:
                option = self.derived[exc.field]
            else:
                option = _option_name(exc.field, self.operation)
            line = f"{option}: {text}" if option else text
        elif isinstance(exc, CertificateError | IdentityError):
            line = exc.message
        elif isinstance(exc, DatabaseError | PersistError):
            line = str(exc)
        elif isinstance(exc, SQLAlchemyError):
            line = "database: " + (str(getattr(exc, "orig", None) or exc).splitlines() or ["unusable"])[0]
            if "database is locked" in line:
                line = ("database: another sss process kept it busy for more than 30 s; nothing was written, "
                        "try again when it is done")
            elif "readonly database" in line or "read-only" in line:
                line = ("database: it cannot be written (a read-only file, folder or URL); nothing was changed: "
                        "make it writable, or copy it and give the copy with --db")
            elif "no such column" in line or "does not exist" in line:
                line += " (the database was made by an older version of sss-sim: start a new one with another --db)"
        else:
            return False
        self._remove_started()
        typer.echo("Error: " + " ".join(line.split()), err=True)
        raise typer.Exit(1)


_STARTED: list[Path] = []  # database files the running command created, until it succeeds


_NEW_DATABASE_STATE = {"schema", "seed"}  # simulatorstate keys a database has before any step succeeded


def _as_new(path: Path) -> bool:
    """Whether the SQLite file holds only what a database gets when it is made (its schema version,
    the seed, the id counters): nothing a step wrote, in this process or another."""
    from sqlalchemy import inspect as inspect_db
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from simulator.procedure import _open_read_only

    engine = _open_read_only(str(path))
    if engine is None:
        return True
    try:
        with engine.connect() as conn:
            for table in inspect_db(conn).get_table_names():
                if table == "simulatorstate":
                    keys = {key for (key,) in conn.execute(text("SELECT key FROM simulatorstate"))}
                    if not keys <= _NEW_DATABASE_STATE:
                        return False
                elif table != "simulatorcounter" and conn.execute(text(f'SELECT 1 FROM "{table}" LIMIT 1')).first():
                    return False
        return True
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _claim(db: str, *, creates: bool) -> None:
    """Before a command opens a SQLite --db that does not exist yet: a command that ``creates`` the
    sandbox notes the file (if the command is refused, :class:`_Refused` removes it again); any
    other command is refused, as a mistyped name would leave an empty database behind."""
    from simulator.crm.db import DatabaseError
    from simulator.procedure import _sqlite_path

    target = _sqlite_path(db)
    if not isinstance(target, Path) or target.exists():
        return
    if not creates:
        raise DatabaseError(f"--db: {db} does not exist, so there is no organization yet: start with sss org init "
                            "(sss walkthrough shows every step), or give the --db your sandbox uses")
    _STARTED.append(target)


def _in_sandbox(db: str, action, *, wire: bool = False, creates: bool = False):
    """``action(ws)`` (a function or a coroutine function) on the sandbox stored in ``db``.

    A database that does not exist is refused, not created, unless the command ``creates`` it. With
    ``wire`` the sandbox's network services run meanwhile (Exchange over EWS, msal tokens): they need
    an organization, so a database without one is refused first."""
    from simulator.workspace import open_workspace

    if creates or not wire:  # (wire refuses a database without an organization just below)
        _claim(db, creates=creates)

    if wire and not _organization_exists(db):
        from simulator.crm.errors import OutOfOrderError

        raise OutOfOrderError(f"{db} holds no organization yet: create one first with sss org init "
                              f"(or a ready one with sss walkthrough --scenario NAME --db {db})")

    async def go():
        async with open_workspace(db, wire=wire) as ws:
            result = action(ws)
            return await result if inspect.isawaitable(result) else result

    return asyncio.run(go())


def _say(text: str) -> None:
    Console(highlight=False, soft_wrap=True).print(text)


@org_app.command("init")
def org_init(
    name: str = typer.Option(..., "--name", help="The organization's name, e.g. Contoso."),
    admin_email: str = typer.Option(..., "--admin-email", help="Email address of the first System Administrator."),
    admin_domain: str = typer.Option("admin", "--admin-domain", help="Domain (logon) name of that user; pass it as --as."),
    admin_name: str = typer.Option("Admin", "--admin-name", help="Full name of that user."),
    ifd: bool = typer.Option(True, "--ifd/--no-ifd", help="The deployment is internet-facing (IFD configured)."),
    hybrid_connector: bool = typer.Option(True, "--hybrid-connector/--no-hybrid-connector",
                                          help="The Dynamics 365 Hybrid Connector is installed."),
    seed: int = typer.Option(0, help="Seed of the ids."),
    db: str = _db_option(),
) -> None:
    """Create the CRM organization with its security roles and a first System Administrator."""
    from simulator.crm.inputs import OrganizationInput, parse
    from simulator.workspace import remember_seed

    with _Refused("org init"):
        parse(OrganizationInput, {"name": name, "admin_name": admin_name, "admin_domain": admin_domain,
                                  "admin_email": admin_email})  # before anything is written (the seed)
        if not _organization_exists(db):
            _claim(db, creates=True)
            remember_seed(db, seed)
        orgid = _in_sandbox(db, creates=True, action=lambda ws: ws.admin.create_organization(
            name, admin_name=admin_name, admin_domain=admin_domain, admin_email=admin_email, ifd=ifd,
            hybrid_connector=hybrid_connector))
    _say(f"[green]Organization {name.strip()} created[/green] (id {orgid}).")
    _say(f"System Administrator: {admin_domain.strip()} <{admin_email.strip().lower()}> (use --as {admin_domain.strip()}).")
    if not (ifd and hybrid_connector):
        _say("[yellow]Prerequisites are missing: see sss org check.[/yellow]")
    _say_next(db)


def _organization_exists(db: str) -> bool:
    """Whether ``db`` holds an organization, read without creating or changing anything."""
    from sqlalchemy import inspect as inspect_db
    from sqlmodel import Session, select

    from simulator.crm.models import Organization
    from simulator.procedure import _read_only_engine

    engine = _read_only_engine(db)
    if engine is None:
        return False
    try:
        if "organization" not in inspect_db(engine).get_table_names():
            return False
        with Session(engine) as session:
            return session.exec(select(Organization)).first() is not None
    finally:
        engine.dispose()


@org_app.command("check")
def org_check(db: str = _db_option()) -> None:
    """Step 1.1: the prerequisites (organization, System Administrator, IFD, Hybrid Connector); exits 1 if one is missing."""
    with _Refused():
        items = _in_sandbox(db, lambda ws: ws.admin.check_organization())
    table = Table(title="Prerequisites (step 1.1)")
    for col in ("prerequisite", "result", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for p in items:
        table.add_row(p.name, "[green]OK[/green]" if p.ok else "[red]MISSING[/red]", p.detail, p.fix)
    Console(highlight=False).print(table)
    missing = [p.name for p in items if not p.ok]
    if missing:
        typer.echo(f"Prerequisites missing: {', '.join(missing)}", err=True)
        raise typer.Exit(1)


@org_app.command("set")
def org_set(
    ifd: bool | None = typer.Option(None, "--ifd/--no-ifd", help="Internet-facing deployment configured."),
    hybrid_connector: bool | None = typer.Option(None, "--hybrid-connector/--no-hybrid-connector",
                                                 help="Dynamics 365 Hybrid Connector installed."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Record a prerequisite of step 1.1 as done (or undone)."""
    from simulator.crm.admin import ValidationError

    with _Refused("org set"):
        if ifd is None and hybrid_connector is None:
            raise ValidationError("nothing to change: give --ifd or --hybrid-connector", "ifd")
        _in_sandbox(db, lambda ws: ws.admin.set_prerequisites(as_user, ifd=ifd, hybrid_connector=hybrid_connector))
    _say("[green]Saved.[/green] Check: sss org check")


@tenant_app.command("create")
def tenant_create(
    name: str = typer.Option(..., "--name", help="The tenant's name, e.g. Contoso."),
    domain: list[str] = typer.Option([], "--domain", help="A domain of the tenant (repeatable); "
                                     "default <name>.onmicrosoft.com."),
    admin: list[str] = typer.Option(..., "--admin", help="An Office 365 global administrator address (repeatable)."),
    db: str = _db_option(),
) -> None:
    """Create an Office 365 tenant in the sandbox's identity service."""
    from simulator.crm.s2s import create_tenant

    with _Refused("tenant create"):
        tenant = create_tenant(_engine(db, creates=True), name, list(domain), list(admin))
    _say(f"[green]Tenant {tenant.name} created[/green]: tenant id {tenant.tenant_id}")
    _say(f"Domains: {', '.join(tenant.domains)}; administrators: {', '.join(tenant.admins)}")
    _say_next(db)


@tenant_app.command("list")
def tenant_list(db: str = _db_option()) -> None:
    """The tenants of the sandbox's identity service."""
    from simulator.crm.s2s import list_tenants

    with _Refused():
        tenants = list_tenants(_engine(db))
    table = Table(title="Tenants")
    for col in ("name", "tenant id", "domains", "administrators", "CRM principal keys"):
        table.add_column(col, overflow="fold")
    from simulator.identity import CRM_APP_ID

    for t in tenants:
        sp = t.principals.get(CRM_APP_ID)
        keys = ", ".join(f"{k.thumbprint[:8]}… until {k.end:%Y-%m-%d}" for k in sp.keys) if sp else ""
        table.add_row(t.name, t.tenant_id, ", ".join(t.domains), ", ".join(t.admins), keys or "none")
    Console().print(table)


@cert_app.command("new")
def cert_new(
    subject: str = typer.Option(..., "--subject", help="The subject, CN=<name>, e.g. CN=crm.contoso.com."),
    days: str = typer.Option("365", "--days", metavar="N", help="Validity in days, from the sandbox clock's now."),
    password: str = typer.Option(..., "--password", prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="Password of the .pfx."),
    out: Path = typer.Option(Path("."), "--out", help="Folder to write <name>.pfx and <name>.cer into."),
    name: str | None = typer.Option(None, "--name", help="File name without extension; default from the CN."),
    without_private_key: bool = typer.Option(False, "--without-private-key",
                                             help="Leave the private key out of the .pfx (an exercise)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    db: str = _db_option(),
) -> None:
    """Make a self-signed certificate: a .pfx with its private key and a .cer with the public part."""
    from sqlmodel import Session

    from simulator.crm.inputs import CertificateInput, parse
    from simulator.crm.s2s import load_clock, new_certificate, save_clock

    with _Refused("cert new"):
        days = parse(CertificateInput, {"subject": subject, "days": days, "password": password},
                     strict=False).days
        engine = _engine(db, creates=True)  # a certificate may come first: it starts the sandbox's clock
        with Session(engine) as session:
            clock = load_clock(session)
            made = new_certificate(subject, days, password, out, clock=clock, file_name=name,
                                   with_private_key=not without_private_key, overwrite=force)
            save_clock(session, clock)
            session.commit()
    _say(f"[green]Certificate {made.subject}[/green] thumbprint {made.thumbprint}")
    _say(f"Valid from {made.not_before:%Y-%m-%d %H:%M:%S} to {made.not_after:%Y-%m-%d %H:%M:%S} UTC (sandbox time).")
    _say(f"Wrote {made.pfx_path}{'' if made.with_private_key else ' (without private key)'} and {made.cer_path}.")
    _say_next(db)


@cert_app.command("install")
def cert_install(
    certificate_file: str = typer.Option(..., "--certificate-file", "--certificateFile",
                                         help="The .pfx file (with its private key)."),
    password: str = typer.Option(..., "--password", prompt=True, hide_input=True, help="Password of the .pfx."),
    certificate_type: str = typer.Option(..., "--certificate-type", "--certificateType",
                                         help="S2STokenIssuer: the certificate the CRM signs S2S tokens with."),
    service_account: str = typer.Option(..., "--service-account", "--serviceAccount",
                                        help="DOMAIN\\account of the asynchronous service (reads the key)."),
    store_find_type: str = typer.Option("FindBySubjectDistinguishedName", "--store-find-type", "--storeFindType",
                                        help="How the script finds the certificate in the store."),
    update_crm: bool = typer.Option(False, "--update-crm", "--updateCrm",
                                    help="Update the CRM deployment (without it only the server's store changes)."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.2 (CertificateReconfiguration.ps1): install the certificate as the S2S token issuer."""
    from simulator.crm.s2s import install_certificate

    with _Refused("cert install"):
        done = install_certificate(_engine(db), as_user, certificate_file, password,
                                   certificate_type=certificate_type, service_account=service_account,
                                   store_find_type=store_find_type, update_crm=update_crm)
    _say(f"Certificate {done.subject}, thumbprint {done.thumbprint}, valid until "
         f"{done.not_after:%Y-%m-%d %H:%M:%S} UTC; private key readable by {done.service_account}.")
    if not done.updated_crm:
        _say("[yellow]The certificate was imported on the server only; the CRM deployment was not changed. "
             "Run again with --update-crm.[/yellow]")
        return
    if done.replaced_thumbprint:
        _say(f"It replaces the S2S token issuer certificate {done.replaced_thumbprint}.")
    _say(f"[green]Installed as the {done.certificate_type} certificate of the CRM deployment.[/green]")
    _say_next(db)


@s2s_app.command("configure")
def s2s_configure(
    root_domain_name: str = typer.Option(..., "--root-domain-name", "--rootDomainName",
                                         help="Name of the server that runs the CRM, e.g. crm.contoso.com."),
    private_key_password: str = typer.Option(..., "--private-key-password", "--privateKeyPassword", prompt=True,
                                             hide_input=True, help="Password of the certificate's private key."),
    cer_file_path: str = typer.Option(..., "--cer-file-path", "--cerFilePath", help="The public certificate (.cer)."),
    pfx_file_path: str = typer.Option(..., "--pfx-file-path", "--pfxFilePath", help="The .pfx with the private key."),
    organization_name: str = typer.Option(..., "--organization-name", "--organizationName",
                                          help="The CRM organization, e.g. Contoso."),
    o365_admin_email: str = typer.Option(..., "--o365-admin-email", "--O365AdminEmail",
                                         help="An Office 365 tenant admin, e.g. admin@contoso.onmicrosoft.com."),
    as_user: str = _as_option(),
    db: str = _db_option(),
) -> None:
    """Step 1.3 (ConfigureCrmServerSideSync): register the CRM with Exchange Online's identity service."""
    from simulator.crm.s2s import configure_server_side_sync
    from simulator.identity import ACS_PRINCIPAL_ID

    with _Refused("s2s configure"):
        done = configure_server_side_sync(
            _engine(db), as_user, root_domain_name=root_domain_name, private_key_password=private_key_password,
            cer_file_path=cer_file_path, pfx_file_path=pfx_file_path, organization_name=organization_name,
            o365_admin_email=o365_admin_email)
    _say(f"Tenant {done.tenant_name} ({done.tenant_id}):")
    _say(f"  service principal name {done.service_principal_name} registered")
    _say(f"  certificate {done.thumbprint} added as a verify key (key id {done.key_id}, until "
         f"{done.key_end:%Y-%m-%d %H:%M:%S} UTC)")
    for tp in done.removed_keys:
        _say(f"  expired key {tp} removed")
    _say(f"Server-based authentication configured (authorization server principal {ACS_PRINCIPAL_ID}).")
    if done.previous_tenant_id:
        _say(f"[yellow]The organization's tenant id changed from {done.previous_tenant_id}.[/yellow]")
    _say(f"S2STenantId of organization {done.organization_name} = {done.tenant_id}")
    _say("[green]ConfigureCrmServerSideSync succeeded.[/green] Check it: sss s2s validate")


@s2s_app.command("validate")
def s2s_validate(db: str = _db_option()) -> None:
    """Step 1.4: server-based authentication validation; exits 1 on "Authentication failure"."""
    from simulator.crm.s2s import validate_s2s

    with _Refused():
        result = validate_s2s(_engine(db))
    table = Table(title=f"Server-based authentication at {result.checked_at:%Y-%m-%d %H:%M:%S} UTC (sandbox time)")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in result.checks:
        mark = "[green]OK[/green]" if c.ok else ("[red]FAILED[/red]" if c.ok is False else "[dim]skipped[/dim]")
        table.add_row(c.name, mark, c.detail)
    Console(highlight=False).print(table)
    if result.ok:
        _say("[green]Success.[/green]")
        return
    typer.echo(" ".join(result.message.split()), err=True)
    raise typer.Exit(1)


@clock_app.command("show")
def clock_show(db: str = _db_option()) -> None:
    """The sandbox's current time."""
    from simulator.crm.s2s import current_time

    with _Refused():
        now = current_time(_engine(db))
    _say(f"{now:%Y-%m-%d %H:%M:%S} UTC")


@clock_app.command("advance")
def clock_advance(
    days: str = typer.Option("0", "--days", metavar="N", help="Days to move forward."),
    hours: str = typer.Option("0", "--hours", metavar="N", help="Hours to move forward."),
    minutes: str = typer.Option("0", "--minutes", metavar="N", help="Minutes to move forward."),
    db: str = _db_option(),
) -> None:
    """Fast-forward the sandbox clock (it never goes back)."""
    from simulator.crm.inputs import ClockAdvanceInput, parse
    from simulator.crm.s2s import advance_clock

    with _Refused("clock advance"):
        span = parse(ClockAdvanceInput, {"days": days, "hours": hours, "minutes": minutes}, strict=False)
        if not (span.days or span.hours or span.minutes):
            from simulator.crm.errors import ValidationError

            raise ValidationError("nothing to advance: give --days, --hours or --minutes (more than 0)", None)
        now = advance_clock(_engine(db), days=span.days or 0, hours=span.hours or 0, minutes=span.minutes or 0)
    _say(f"The sandbox clock is now {now:%Y-%m-%d %H:%M:%S} UTC.")


@contextlib.contextmanager
def stop_on_signals(stop):
    """SIGTERM and SIGINT call ``stop()`` (a graceful end: the work under way finishes) while the
    block runs in the event loop; a second signal interrupts at once."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    seen: list[int] = []

    def handle(signum: int) -> None:
        seen.append(signum)
        if len(seen) == 1:
            stop()
        elif task is not None:
            task.cancel()

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield seen
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


# ------------------------------------------------------------------------------ wire mode (the network services)
@app.command()
def serve(
    db: str = _db_option(),
    seed: int = typer.Option(1, min=0, help="Seed of the organization built on an empty database."),
    virtual: bool = typer.Option(False, "--virtual", help="Virtual clock, moved with POST /_sim/clock/advance."),
    info_json: Path | None = typer.Option(None, "--info-json", metavar="FILE",
                                          help="Write the endpoints, CA file, ids and certificate as JSON."),
    http_port: int = typer.Option(0, min=0, max=65535, help="HTTPS port (0: a free one)."),
    smtp_port: int = typer.Option(0, min=0, max=65535, help="SMTP port (0: a free one)."),
    users: int = typer.Option(10, min=1, max=10_000, help="Users of the organization built on an empty database."),
    state_dir: Path | None = typer.Option(None, help="Where the CA and certificates live (default $SSS_HOME)."),
) -> None:
    """Run EWS, Autodiscover, SMTP, the identity service and the engine on loopback."""
    from simulator.crm.db import sqlite_url
    from simulator.serve import serve as run_serve

    url = db if "://" in db else sqlite_url(db)
    problem = _serve_problem(info_json, state_dir, {"--http-port": http_port, "--smtp-port": smtp_port})
    if problem:  # before the organization is built: a refused serve writes nothing
        typer.echo(f"Error: {problem}", err=True)
        raise typer.Exit(2)

    async def go() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop.set):
            await run_serve(db_url=url, seed=seed, state_dir=state_dir, virtual=virtual, users=users, queues=2,
                            contacts=20, http_port=http_port, smtp_port=smtp_port, info_json=info_json, out=_say,
                            stop=stop)
        if stop.is_set():
            _say("Stopped; everything was written as it happened.")

    with _Refused():
        asyncio.run(go())


def _serve_problem(info_json: Path | None, state_dir: Path | None, ports: dict[str, int]) -> str | None:
    """What in serve's options cannot work (one line naming the option), found before anything is built."""
    import socket

    if info_json is not None:
        if info_json.is_dir():
            return f"--info-json: {info_json} is a folder; give a file path, e.g. {info_json / 'sss.json'}"
        if not info_json.parent.is_dir():
            return f"--info-json: {info_json.parent} is not a folder that exists; give a file in one"
    if state_dir is not None and state_dir.exists() and not state_dir.is_dir():
        return f"--state-dir: {state_dir} is a file; give a folder (it is made when missing)"
    for option, port in ports.items():
        if port:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    return (f"--{option.lstrip('-')}: {port} cannot be used on 127.0.0.1 ({exc.strerror or exc}); "
                            "give another port, or 0 for a free one")
    return None


# the other commands register themselves on `app`
from simulator import cli_capacity, cli_console, cli_scenario, cli_setup, cli_walkthrough  # noqa: E402,F401


def main() -> None:
    import logging

    # exchangelib's connection-pool notices (e.g. under ErrorServerBusy) are not for the reader of a command
    logging.getLogger("exchangelib").setLevel(logging.ERROR)
    try:
        app()
    except Exception as exc:  # a bug: one line for the user, the whole story in a file
        report = _write_report(exc)
        typer.echo(f"Error: sss failed unexpectedly ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                   f"the full report is in {report}", err=True)
        raise SystemExit(2) from None


def _write_report(exc: BaseException) -> str:
    """The traceback of an unexpected error, in ``$SSS_HOME/reports`` (or the temporary folder)."""
    import os
    import tempfile
    import traceback

    from simulator.tls import default_state_dir

    text = "sss " + " ".join(sys.argv[1:]) + "\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    for folder in (default_state_dir() / "reports", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=f"sss-error-{os.getpid()}-", suffix=".txt", dir=folder)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            return path
        except OSError:
            continue
    return "(nowhere: no folder could be written)"


if __name__ == "__main__":  # python -m simulator.cli: the commands live on the imported module's app
    from simulator.cli import main as imported_main

    imported_main()
