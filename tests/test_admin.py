"""Administrator operations (SPEC section 1): field validation, privileges, refusals write nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select
from support import ADMIN, ALICE, BOB, SUPPORT, build_org, run

from simulator.crm.admin import AdminError, OutOfOrderError, PrivilegeError, ValidationError
from simulator.crm.models import EmailServerProfile, Mailbox, Organization, SystemUser
from simulator.sandbox import Sandbox


def _profiles(sb: Sandbox) -> list[EmailServerProfile]:
    with Session(sb.db) as s:
        return list(s.exec(select(EmailServerProfile)).all())


def _org_row(sb: Sandbox) -> Organization:
    with Session(sb.db) as s:
        return s.exec(select(Organization)).one()


@pytest.fixture
def bare():
    """An organization with users but no profile yet (tenant id from ConfigureCrmServerSideSync)."""
    sb = Sandbox(seed=1)
    sb.admin.create_organization("Contoso", tenant_id="tenant-1")
    sb.admin.add_user("Alice", ALICE)
    yield sb
    sb.close()


@pytest.mark.parametrize("fields, field", [
    ({"minpollingintervalinminutes": 2000}, "minpollingintervalinminutes"),
    ({"minpollingintervalinminutes": -1}, "minpollingintervalinminutes"),
    ({"servertype": 7}, "servertype"),
    ({"servertype": 0}, "servertype"),
    ({"useautodiscover": False}, "incomingserverlocation"),
    ({"useautodiscover": False, "incomingserverlocation": "https://ews.example/EWS/Exchange.asmx"},
     "outgoingserverlocation"),
    ({"useautodiscover": False, "incomingserverlocation": "ftp://x", "outgoingserverlocation": "https://x"},
     "incomingserverlocation"),
    ({"maxconcurrentconnections": 0}, "maxconcurrentconnections"),
    ({"maxconcurrentconnections": 301}, "maxconcurrentconnections"),
    ({"timeoutmailboxconnectionafteramount": 100001}, "timeoutmailboxconnectionafteramount"),
    ({"incomingcredentialretrieval": 0}, "incomingcredentialretrieval"),
    ({"outgoingcredentialretrieval": 9}, "outgoingcredentialretrieval"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"description": "d" * 2001}, "description"),
    ({"usedefaulttenantid": False}, "exchangeonlinetenantid"),
    ({"usedefaulttenantid": False, "exchangeonlinetenantid": "t" * 37}, "exchangeonlinetenantid"),
    ({"processemailsreceivedafter": "yesterday"}, "processemailsreceivedafter"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_profile_fields_are_refused_naming_the_field_and_nothing_is_written(bare, fields, field):
    values = {"name": "EXO", **fields}
    with pytest.raises(ValidationError) as exc:
        bare.admin.create_profile(ADMIN, **values)
    assert exc.value.field == field
    assert str(exc.value).startswith(field)
    assert _profiles(bare) == []


def test_valid_profile_is_saved_with_the_org_tenant_id(bare):
    pid = bare.admin.create_profile(ADMIN, name="EXO", minpollingintervalinminutes=1440)
    [p] = _profiles(bare)
    assert p.emailserverprofileid == pid
    assert p.exchangeonlinetenantid == "tenant-1"
    assert p.servertype == 3
    assert p.minpollingintervalinminutes == 1440
    assert p.moveundeliveredemails is False
    assert p.maxconcurrentconnections == 10
    with Session(bare.db) as s:
        admin = s.exec(select(SystemUser).where(SystemUser.domainname == ADMIN)).one()
    assert p.ownerid == admin.systemuserid  # the owner is pre-filled with the creator


def test_profile_without_autodiscover_takes_the_locations(bare):
    bare.admin.create_profile(ADMIN, name="EXO", useautodiscover=False,
                              incomingserverlocation="https://outlook.office365.com/EWS/Exchange.asmx",
                              outgoingserverlocation="https://outlook.office365.com/EWS/Exchange.asmx")
    assert _profiles(bare)[0].useautodiscover is False


def test_duplicate_profile_name_is_refused(bare):
    bare.admin.create_profile(ADMIN, name="EXO", minpollingintervalinminutes=7)
    with pytest.raises(ValidationError) as exc:
        bare.admin.create_profile(ADMIN, name="  EXO ", minpollingintervalinminutes=9)
    assert exc.value.field == "name"
    [p] = _profiles(bare)
    assert p.minpollingintervalinminutes == 7


def test_default_tenant_id_without_org_tenant_is_refused():
    sb = Sandbox(seed=2)
    sb.admin.create_organization("Contoso")  # ConfigureCrmServerSideSync has not run
    with pytest.raises(OutOfOrderError) as exc:
        sb.admin.create_profile(ADMIN, name="EXO")
    assert exc.value.field == "usedefaulttenantid"
    assert _profiles(sb) == []
    # typing the tenant id instead works
    sb.admin.create_profile(ADMIN, name="EXO", usedefaulttenantid=False, exchangeonlinetenantid="typed-tenant")
    assert _profiles(sb)[0].exchangeonlinetenantid == "typed-tenant"


def test_operations_need_the_privileges(bare):
    # alice is a Salesperson: read mailbox only
    with pytest.raises(PrivilegeError) as exc:
        bare.admin.create_profile("alice", name="EXO")
    assert exc.value.field == "as_user"
    assert _profiles(bare) == []
    pid = bare.admin.create_profile(ADMIN, name="EXO")
    with pytest.raises(PrivilegeError):
        bare.admin.set_default_profile("alice", pid)
    assert _org_row(bare).defaultemailserverprofileid is None
    ids = [m.mailboxid for m in bare.admin.mailboxes()]
    with pytest.raises(PrivilegeError):
        bare.admin.approve("alice", ids)
    assert {m.emailrouteraccessapproval for m in bare.admin.mailboxes()} == {2}


def test_unknown_or_disabled_user_is_refused(bare):
    with pytest.raises(AdminError) as exc:
        bare.admin.create_profile("mallory", name="EXO")
    assert exc.value.field == "as_user"
    assert _profiles(bare) == []


def test_apply_defaults_before_a_default_profile_is_refused(bare):
    ids = [m.mailboxid for m in bare.admin.mailboxes()]
    with pytest.raises(AdminError) as exc:
        bare.admin.apply_default_settings(ADMIN, ids)
    assert exc.value.field == "defaultemailserverprofileid"
    with Session(bare.db) as s:
        assert {m.emailserverprofile for m in s.exec(select(Mailbox)).all()} == {None}


def test_set_default_profile_refuses_bad_values_and_writes_nothing(bare):
    pid = bare.admin.create_profile(ADMIN, name="EXO")
    with pytest.raises(ValidationError) as exc:
        bare.admin.set_default_profile(ADMIN, "no-such-profile")
    assert exc.value.field == "defaultemailserverprofileid"
    with pytest.raises(ValidationError) as exc:
        bare.admin.set_default_profile(ADMIN, pid, incoming=9)
    assert exc.value.field == "incomingemaildeliverymethod"
    assert _org_row(bare).defaultemailserverprofileid is None


def test_approve_with_an_unknown_mailbox_changes_nothing(bare):
    ids = [m.mailboxid for m in bare.admin.mailboxes()]
    with pytest.raises(ValidationError) as exc:
        bare.admin.approve(ADMIN, [*ids, "no-such-mailbox"])
    assert exc.value.field == "mailboxes"
    assert {m.emailrouteraccessapproval for m in bare.admin.mailboxes()} == {2}


def test_update_org_refusal_keeps_the_earlier_fields_unchanged(bare):
    with pytest.raises(ValidationError) as exc:
        bare.admin.update_org(ADMIN, generatealertsforwarnings=True, s2stenantid="hijack")
    assert exc.value.field == "s2stenantid"
    with pytest.raises(ValidationError) as exc:
        bare.admin.update_org(ADMIN, generatealertsforwarnings=True, generatealertsforerrors="no")
    assert exc.value.field == "generatealertsforerrors"
    row = _org_row(bare)
    assert row.generatealertsforwarnings is False
    assert row.generatealertsforerrors is True
    assert row.s2stenantid == "tenant-1"


def test_add_user_refusals_write_nothing(bare):
    before = len(bare.admin.mailboxes())
    with pytest.raises(ValidationError) as exc:
        bare.admin.add_user("Eve", "eve-at-contoso")
    assert exc.value.field == "internalemailaddress"
    with pytest.raises(ValidationError) as exc:
        bare.admin.add_user("Eve", "eve@contoso.example", roles=["Pirate"])
    assert exc.value.field == "roles"
    with pytest.raises(ValidationError) as exc:
        bare.admin.add_user("Alice 2", "alice2@contoso.example", domainname="alice")
    assert exc.value.field == "domainname"
    with pytest.raises(ValidationError) as exc:
        bare.admin.add_user("Eve", "eve@contoso.example", track=9)
    assert exc.value.field == "incomingemailfilteringmethod"
    assert len(bare.admin.mailboxes()) == before
    assert "eve@contoso.example" not in bare.store.mailboxes


def test_every_user_and_queue_gets_a_mailbox_with_org_defaults(bare):
    bare.admin.add_queue("Support", SUPPORT, owner=ADMIN)
    views = {m.emailaddress: m for m in bare.admin.mailboxes()}
    assert set(views) == {"admin@contoso.example", ALICE, SUPPORT}
    assert views[SUPPORT].owner_type == "queue"
    assert all(v.emailrouteraccessapproval == 2 and v.incomingemailstatus == 0 for v in views.values())
    assert SUPPORT in bare.store.mailboxes


def test_second_organization_is_refused(bare):
    with pytest.raises(AdminError):
        bare.admin.create_organization("Other")
    with Session(bare.db) as s:
        assert len(s.exec(select(Organization)).all()) == 1


def test_test_and_enable_refuses_a_mailbox_without_profile_and_writes_nothing(make_org):
    o = make_org(test=False)
    o.set_mailbox(BOB, emailserverprofile=None)
    with pytest.raises(AdminError) as exc:
        o.test_and_enable([ALICE, BOB])
    assert exc.value.field is None  # the selection is fine; the mailbox lacks its settings (step 1.7)
    assert "has no email server profile" in str(exc.value) and "step 1.7" in str(exc.value)
    assert o.mailbox(ALICE).incomingemailstatus == 0
    assert o.alerts() == []


def test_test_and_enable_refuses_a_mailbox_that_uses_sss_for_nothing(make_org):
    o = make_org(test=False)
    o.set_mailbox(BOB, incomingemaildeliverymethod=1, outgoingemaildeliverymethod=1, actdeliverymethod=0)
    with pytest.raises(AdminError) as exc:
        o.test_and_enable([BOB])
    assert exc.value.field is None
    assert "synchronization for nothing" in str(exc.value) and "step 1.7" in str(exc.value)
    assert o.mailbox(BOB).incomingemailstatus == 0


def test_test_and_enable_needs_privileges(make_org):
    o = make_org(test=False)
    with pytest.raises(PrivilegeError):
        run(o.sb.admin.test_and_enable("alice", [o.mailboxes[ALICE]]))
    assert o.mailbox(ALICE).incomingemailstatus == 0


def test_setup_flow_builds_an_enabled_org():
    o = build_org(seed=4, profile={"processemailsreceivedafter": None})
    for address in o.mailboxes:
        mb = o.mailbox(address)
        assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.mailboxstatus) == (1, 1, 1)
        assert mb.enabledforincomingemail and mb.enabledforoutgoingemail
        assert mb.emailrouteraccessapproval == 1
        assert mb.emailserverprofile == o.profile_id
    assert o.profile().processemailsreceivedafter is None
    assert o.sb.clock.now() - o.mailbox(ALICE).testmailboxaccesscompletedon < timedelta(seconds=1)


def test_creating_the_organization_with_a_bad_admin_address_writes_nothing():
    from sqlalchemy import func

    from simulator.crm.models import SecurityRole

    sb = Sandbox(seed=9)
    with pytest.raises(ValidationError) as info:
        sb.admin.create_organization("Contoso", admin_email="not-an-address")
    assert info.value.field == "admin_email"
    with sb.db.connect() as conn:
        for table in (Organization, SecurityRole, SystemUser, Mailbox):
            assert conn.execute(select(func.count()).select_from(table.__table__)).scalar() == 0
    sb.admin.create_organization("Contoso", admin_email="admin@contoso.example")  # and it can be done again
    assert [m.emailaddress for m in sb.admin.mailboxes()] == ["admin@contoso.example"]
