"""The ACT cycle (appointments, contacts and tasks; SPEC 1.11 and 3.6): for now, the org claim only.

An Exchange mailbox syncs ACT with one organization at a time. That organization's id and the
time it last stamped the mailbox are kept on the Exchange mailbox (SPEC 1.11, 5). Test & Enable
claims an unclaimed mailbox (``engine.mailbox_test``); each ACT cycle then checks the claim:

* held by this organization (or by nobody): stamp it again with this organization's id and the
  time now (the "last sync" time);
* held by another organization: the permanent error ``ConfiguredWithAnotherOrganization``, which
  the engine's normal error path turns into ACT disabled at once (``enabledforact`` off,
  ``actstatus`` Failure) and an Error alert on the mailbox and the profile owner's wall.

**Not built yet:** the item sync itself — CRM appointments, contacts and tasks to Exchange and back,
item-level mapping, conflict rule 10.3, the "Organizer field not present" alert. A cycle checks and
stamps the claim and nothing else; it reports no items found, so the cadence stretches as for a
quiet mailbox. The item sync is a later piece of work.

Where the claim lives in Exchange
---------------------------------
Over EWS the claim is two named extended properties on the mailbox's "Top of Information Store"
folder (distinguished id ``msgfolderroot``), in the property set :data:`ACT_PROPERTY_SET_ID`:

* :data:`ACT_ORG_ID_NAME` (``String``): the organization id;
* :data:`ACT_STAMPED_ON_NAME` (``SystemTime``): when that organization last stamped the mailbox.

The real product keeps its own, undocumented property; the GUID below is this project's choice,
fixed so that any EWS client (exchangelib, a test suite in another language) can read the claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import SyncError
from engine.ports import ActOrgClaim, ExchangePort, MailboxWork, OrgSettings

ACT_PROPERTY_SET_ID = "5e6b2a4c-8d1f-4c3a-9b7e-2f0d6c5a1e93"  # lowercase, as EWS clients compare it
ACT_ORG_ID_NAME = "ActSyncOrganizationId"
ACT_STAMPED_ON_NAME = "ActSyncOrganizationStampedOn"
ACT_CLAIM_FOLDER = "msgfolderroot"

CONFIGURED_WITH_ANOTHER_ORG = "ConfiguredWithAnotherOrganization"


def another_org_error(mailbox: str, other_org: str) -> SyncError:
    """The permanent error for a mailbox whose ACT another organization syncs."""
    return SyncError(
        CONFIGURED_WITH_ANOTHER_ORG,
        f"The Exchange mailbox {mailbox} syncs appointments, contacts and tasks with another organization "
        f"({other_org}). Test and enable it with \"Sync items with Exchange from this org only\" to move it "
        "to this organization",
    )


@dataclass(slots=True)
class ActResult:
    found: int = 0  # items synced (always 0 until the item sync exists)
    claim: ActOrgClaim | None = None  # the claim as stamped by this cycle
    error: SyncError | None = None


async def run_act(exchange: ExchangePort, org: OrgSettings, mailbox: MailboxWork) -> ActResult:
    """One ACT cycle: read the claim; stamp it when this organization may sync, else fail."""
    claim = await exchange.get_act_org(mailbox.emailaddress)
    if claim is not None and claim.org_id != org.organizationid:
        return ActResult(error=another_org_error(mailbox.emailaddress, claim.org_id))
    stamped = await exchange.set_act_org(mailbox.emailaddress, org.organizationid)
    return ActResult(claim=stamped)
