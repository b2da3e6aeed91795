"""The S2S steps of the setup flow (SPEC 1.2-1.4) through the `sss` CLI, one command at a time.

Every step runs against a fresh SQLite file; between commands the state lives only in that
database (identity service and sandbox clock included). Each refusal must exit 1 with one line on
stderr naming the problem and leave every table exactly as it was.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from sqlmodel import Session, select
from trial import ADMIN, PASSWORD, ROOT, TENANT_ADMIN, Trial, check_refused, refused

from engine.clock import VirtualClock
from engine.errors import TokenError
from simulator.crm import s2s
from simulator.crm.admin import SALESPERSON, Admin
from simulator.crm.models import Organization, S2SCertificate, S2SConfiguration
from simulator.crm.platform import IdFactory, Platform
from simulator.identity import (
    ACS_PRINCIPAL_ID,
    CRM_APP_ID,
    EXCHANGE_SCOPE,
    certs,
    make_certificate,
    write_pfx,
)
from simulator.identity.service import CLIENT_ASSERTION_TYPE

# ------------------------------------------------------------------------------ the whole chain

def test_whole_chain_from_an_empty_database(trial):
    out = trial.org_init().output
    assert "Contoso" in out and "--as admin" in out
    out = trial.tenant_create().output
    assert "contoso.onmicrosoft.com" in out
    out = trial.cert_new().output
    assert Path(trial.pfx()).is_file() and Path(trial.cer()).is_file() and "thumbprint" in out
    cert = certs.load_cer(trial.cer())
    assert cert.not_valid_before_utc <= trial.clock().now() < cert.not_valid_after_utc  # sandbox time

    result = trial.cert_install()
    assert result.exit_code == 0, result.output + result.stderr
    assert "Installed as the S2STokenIssuer" in result.output
    with Session(trial.engine) as session:
        row = session.get(S2SCertificate, "S2STokenIssuer")
        assert row.thumbprint == certs.thumbprint(cert)
        assert row.serviceaccount == "CONTOSO\\crmasync" and row.storefindtype == "FindBySubjectDistinguishedName"
        assert "PRIVATE KEY" in row.privatekeypem and row.installedon is not None

    result = trial.configure()
    assert result.exit_code == 0, result.output + result.stderr
    assert f"{CRM_APP_ID}/{ROOT}" in result.output and ACS_PRINCIPAL_ID in result.output

    with Session(trial.engine) as session:
        org = session.exec(select(Organization)).one()
        config = session.get(S2SConfiguration, org.organizationid)
        clock = s2s.load_clock(session)
        identity = s2s.load_identity(session, clock)
    tenant = identity.tenant(TENANT_ADMIN.split("@")[1])
    assert org.s2stenantid == tenant.tenant_id
    assert config.authorizationserverprincipalid == ACS_PRINCIPAL_ID
    assert config.certificatethumbprint == certs.thumbprint(cert) and config.tenantid == tenant.tenant_id
    sp = tenant.principals[CRM_APP_ID]
    assert f"{CRM_APP_ID}/{ROOT}" in sp.service_principal_names
    assert sp.key_by_thumbprint(certs.thumbprint(cert)) is not None

    result = s2s.validate_s2s(trial.engine)
    assert result.ok and result.outcome == "Success", result.checks
    assert [c.ok for c in result.checks] == [True] * 5
    assert trial.sss("s2s", "validate").exit_code == 0

    # what the wire-mode engine gets, and that it really buys a token from the persisted identity service
    creds = s2s.s2s_credentials(trial.engine)
    assert (creds.tenant_id, creds.client_id, creds.thumbprint) == (tenant.tenant_id, CRM_APP_ID,
                                                                     certs.thumbprint(cert))
    base = "https://login.sandbox.test"
    now = int(clock.now().timestamp())
    assertion = jwt.encode({"aud": f"{base}/{creds.tenant_id}/oauth2/v2.0/token", "iss": CRM_APP_ID,
                            "sub": CRM_APP_ID, "jti": str(uuid.uuid4()), "nbf": now, "iat": now, "exp": now + 600},
                           creds.private_key_pem, algorithm="RS256",
                           headers={"x5t": certs.x5t(x509.load_pem_x509_certificate(creds.certificate_pem.encode()))})
    answer = identity.issue_token(creds.tenant_id, {
        "grant_type": "client_credentials", "client_id": CRM_APP_ID, "scope": EXCHANGE_SCOPE,
        "client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion}, base_url=base)
    assert answer["access_token"]


def test_configure_again_is_idempotent_and_removes_expired_keys(configured):
    # a second certificate, registered after the first has expired: the old key is dropped
    configured.ok("clock", "advance", "--days", "20")
    configured.cert_new("crm2", 365)
    configured.ok("clock", "advance", "--days", "15")  # the first certificate is now expired
    assert configured.cert_install(certificate_file=configured.pfx("crm2")).exit_code == 0
    result = configured.configure(cer_file_path=configured.cer("crm2"), pfx_file_path=configured.pfx("crm2"))
    assert result.exit_code == 0, result.stderr
    assert "expired key" in result.output
    assert s2s.validate_s2s(configured.engine).ok
    again = configured.configure(cer_file_path=configured.cer("crm2"), pfx_file_path=configured.pfx("crm2"))
    assert again.exit_code == 0
    with Session(configured.engine) as session:
        identity = s2s.load_identity(session, s2s.load_clock(session))
    sp = identity.tenants[0].principals[CRM_APP_ID]
    assert len(sp.keys) == 1 and sp.service_principal_names.count(f"{CRM_APP_ID}/{ROOT}") == 1


# ------------------------------------------------------------------------------ 1.2 refusals

def test_install_wrong_password(ready):
    check_refused(ready, lambda: ready.cert_install(password="nope"), "--password", "password")


def test_install_missing_file(ready):
    check_refused(ready, lambda: ready.cert_install(certificate_file=str(ready.dir / "absent.pfx")),
                  "--certificate-file", "does not exist")


def test_install_pfx_without_private_key(ready):
    ready.cert_new("nokey", 30, "--without-private-key")
    check_refused(ready, lambda: ready.cert_install(certificate_file=ready.pfx("nokey")),
                  "--certificate-file", "no private key")


def test_install_pfx_written_without_key_by_the_helper(ready):
    key, cert = make_certificate("crm.contoso.com", 30, ready.clock())
    write_pfx(ready.dir / "bare.pfx", None, cert, PASSWORD)
    check_refused(ready, lambda: ready.cert_install(certificate_file=ready.pfx("bare")), "no private key")


def test_install_expired_certificate(ready):
    ready.ok("clock", "advance", "--days", "31")
    check_refused(ready, ready.cert_install, "--certificate-file", "expired")


def test_install_wrong_certificate_type(ready):
    check_refused(ready, lambda: ready.cert_install(certificate_type="AuthTokenIssuer"),
                  "--certificate-type", "S2STokenIssuer")


def test_install_unknown_store_find_type(ready):
    check_refused(ready, lambda: ready.cert_install(store_find_type="FindByMagic"), "--store-find-type")


def test_install_bad_service_account(ready):
    check_refused(ready, lambda: ready.cert_install(service_account="crmasync"), "--service-account")


def test_install_unknown_user(ready):
    check_refused(ready, lambda: ready.cert_install(**{"--as": "mallory"}), "--as", "mallory")


def test_install_needs_system_administrator(ready):
    engine = ready.engine
    clock = ready.clock()
    Admin(engine, clock, Platform(engine, clock), None, IdFactory(7)).add_user(
        "Sam", "sam@contoso.com", domainname="sam", roles=[SALESPERSON])
    check_refused(ready, lambda: ready.cert_install(**{"--as": "sam"}), "--as", "System Administrator")


def test_install_before_org_init(trial):
    trial.cert_new()
    check_refused(trial, trial.cert_install, "sss org init")


def test_install_without_update_crm_changes_nothing(ready):
    before = ready.snapshot()
    result = ready.sss("cert", "install", "--certificate-file", ready.pfx(), "--password", PASSWORD,
                       "--certificate-type", "S2STokenIssuer", "--service-account", "CONTOSO\\crmasync",
                       "--as", ADMIN)
    assert result.exit_code == 0 and "--update-crm" in result.output
    assert ready.snapshot() == before


def test_install_accepts_the_script_parameter_names(ready):
    result = ready.sss("cert", "install", "--certificateFile", ready.pfx(), "--password", PASSWORD,
                       "--certificateType", "s2stokenissuer", "--serviceAccount", "CONTOSO\\crmasync",
                       "--storeFindType", "FindBySubjectDistinguishedName", "--updateCrm", "--as", ADMIN)
    assert result.exit_code == 0, result.stderr
    assert s2s.installed_certificate(ready.engine) is not None


# ------------------------------------------------------------------------------ 1.3 refusals

def test_configure_before_cert_install(ready):
    check_refused(ready, ready.configure, "step 1.2")


def test_configure_wrong_password(installed):
    check_refused(installed, lambda: installed.configure(private_key_password="nope"), "--private-key-password")


def test_configure_key_not_matching_the_cer(installed):
    installed.cert_new("other", 30)
    check_refused(installed, lambda: installed.configure(cer_file_path=installed.cer("other")),
                  "--cer-file-path", "does not match")


def test_configure_with_a_certificate_other_than_the_installed_one(installed):
    installed.cert_new("other", 30)
    check_refused(installed, lambda: installed.configure(cer_file_path=installed.cer("other"),
                                                         pfx_file_path=installed.pfx("other")),
                  "--cer-file-path", "not the one installed")


def test_configure_unknown_tenant_admin(installed):
    check_refused(installed, lambda: installed.configure(o365_admin_email="someone@fabrikam.onmicrosoft.com"),
                  "--o365-admin-email", "not an administrator")


def test_configure_before_the_tenant_exists(trial):
    trial.org_init()
    trial.cert_new()
    assert trial.cert_install().exit_code == 0
    check_refused(trial, trial.configure, "--o365-admin-email", "sss tenant create")


def test_configure_unknown_organization(installed):
    check_refused(installed, lambda: installed.configure(organization_name="Fabrikam"), "--organization-name")


def test_configure_expired_certificate(installed):
    installed.ok("clock", "advance", "--days", "31")
    check_refused(installed, installed.configure, "--pfx-file-path", "expired")


def test_configure_missing_files(installed):
    check_refused(installed, lambda: installed.configure(pfx_file_path=str(installed.dir / "x.pfx")),
                  "--pfx-file-path", "does not exist")
    check_refused(installed, lambda: installed.configure(cer_file_path=str(installed.dir / "x.cer")),
                  "--cer-file-path", "does not exist")


def test_configure_needs_a_known_user(installed):
    check_refused(installed, lambda: installed.configure(**{"as": "nobody"}), "--as")


# ------------------------------------------------------------------------------ 1.4 validation

def failing(result: s2s.S2SValidation) -> set[str]:
    return {c.code for c in result.checks if c.ok is False}


def test_validate_no_certificate_installed(ready):
    result = s2s.validate_s2s(ready.engine)
    assert not result.ok and result.outcome == "Authentication failure"
    assert "certificate_missing" in failing(result)
    assert result.message.startswith("Authentication failure")
    cli = ready.sss("s2s", "validate")
    assert cli.exit_code == 1 and "Authentication failure" in cli.stderr


def test_validate_installed_but_not_configured(installed):
    result = s2s.validate_s2s(installed.engine)
    assert failing(result) == {"not_configured", "tenant_id_missing"}


def test_validate_expired_certificate(configured):
    assert s2s.validate_s2s(configured.engine).ok
    configured.ok("clock", "advance", "--days", "31")
    result = s2s.validate_s2s(configured.engine)
    assert result.outcome == "Authentication failure"
    assert "certificate_expired" in failing(result)
    assert "expired" in result.message


def test_validate_certificate_not_registered(configured):
    configured.cert_new("other", 30)
    assert configured.cert_install(certificate_file=configured.pfx("other")).exit_code == 0
    result = s2s.validate_s2s(configured.engine)
    assert result.outcome == "Authentication failure"
    assert failing(result) == {"certificate_not_registered"}
    with Session(configured.engine) as session:
        registered = session.exec(select(S2SConfiguration)).one().certificatethumbprint
    assert registered in result.failure.detail  # names the registered certificate too


def test_validate_with_a_caller_clock_and_identity(configured):
    with Session(configured.engine) as session:
        clock = s2s.load_clock(session)
        identity = s2s.load_identity(session, clock)
    assert s2s.validate_s2s(configured.engine, clock, identity=identity).ok
    later = VirtualClock(clock.now())
    later.advance(40 * 86400)
    assert "certificate_expired" in failing(s2s.validate_s2s(configured.engine, later, identity=identity))


def test_credentials_raise_the_authentication_failure(configured):
    configured.ok("clock", "advance", "--days", "31")
    with pytest.raises(s2s.S2SAuthenticationError) as info:
        s2s.s2s_credentials(configured.engine)
    assert isinstance(info.value, TokenError) and info.value.code == "AuthenticationFailure"
    assert info.value.result.failure.code == "certificate_expired"


# ------------------------------------------------------------------------------ CLI odds and ends

def test_clock_is_persisted_and_only_moves_forward(trial):
    trial.tenant_create()  # a sandbox to read: clock show refuses a database that does not exist
    first = trial.ok("clock", "show").output
    assert trial.ok("clock", "show").output == first
    back = trial.sss("clock", "advance", "--days", "-1")
    assert back.exit_code == 1 and back.stderr.strip().startswith("Error: --days: '-1' is out of range")
    assert trial.ok("clock", "show").output == first
    trial.ok("clock", "advance", "--days", "1", "--hours", "2")
    assert trial.ok("clock", "show").output != first


def test_tenant_errors(trial):
    trial.tenant_create()
    check_refused(trial, lambda: trial.sss(*Trial.TENANT), "--name", "already exists")
    check_refused(trial, lambda: trial.sss("tenant", "create", "--name", "Other", "--domain", "contoso.onmicrosoft.com",
                                           "--admin", "x@contoso.onmicrosoft.com"), "--domain", "contoso.onmicrosoft.com")
    check_refused(trial, lambda: trial.sss("tenant", "create", "--name", "Fabrikam", "--admin", "x@elsewhere.com"),
                  "--admin")


def test_cert_new_refuses_a_bad_subject_and_keeps_existing_files(trial):
    refused(trial, trial.sss("cert", "new", "--subject", "crm.contoso.com", "--password", "x",
                             "--out", str(trial.dir)), "--subject")
    trial.cert_new()
    refused(trial, trial.sss("cert", "new", "--subject", f"CN={ROOT}", "--password", "x", "--out", str(trial.dir),
                             "--name", "crm"), "already exists")


def test_org_init_twice(trial):
    trial.org_init()
    check_refused(trial, lambda: trial.sss("org", "init", "--name", "Contoso", "--admin-email", "a@contoso.com"),
                  "already exists")
    refused(trial, trial.sss("org", "init", "--name", "X", "--admin-email", "not-an-address"), "--admin-email")
