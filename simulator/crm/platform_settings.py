"""Settings the engine reads from the organization and its email server profiles."""

from __future__ import annotations

from sqlalchemy import select

from engine.ports import OrgSettings, ProfileSettings
from simulator.crm.models import Organization
from simulator.crm.platform_sql import PRO

_ORG = Organization.__table__
_ORG_COLUMNS = [  # named as the fields of OrgSettings
    _ORG.c.requireapprovalforuseremail, _ORG.c.requireapprovalforqueueemail, _ORG.c.generatealertsforerrors,
    _ORG.c.generatealertsforwarnings, _ORG.c.generatealertsforinformation,
    _ORG.c.notifymailboxownerofemailserverlevelalerts, _ORG.c.tracksentitems, _ORG.c.organizationid,
    _ORG.c.physicalandlogicaldeletesdiffer,
]
_PROFILE_COLUMNS = [
    PRO.c.emailserverprofileid, PRO.c.name, PRO.c.ownerid, PRO.c.statecode, PRO.c.minpollingintervalinminutes,
    PRO.c.maxconcurrentconnections, PRO.c.moveundeliveredemails, PRO.c.processemailsreceivedafter,
    PRO.c.timeoutmailboxconnection, PRO.c.timeoutmailboxconnectionafteramount, PRO.c.incomingserverlocation,
    PRO.c.useautodiscover,
]


class SettingsMixin:
    """Organization settings and profiles. Uses ``self.db`` and ``self._prepared``."""

    def org_settings(self) -> OrgSettings:
        # read at every scheduling step: a prepared statement of the columns needed (the first row)
        with self.db.connect() as conn:
            rows = self._prepared(("org_settings",), lambda: select(*_ORG_COLUMNS).limit(1)).fetchall(
                conn, {}, _ORG_COLUMNS)
        if not rows:
            return OrgSettings()
        return OrgSettings(**{c.name: v for c, v in zip(_ORG_COLUMNS, rows[0], strict=True)})

    def _org_row(self, conn):
        return conn.execute(select(Organization.__table__)).mappings().first()

    def profiles(self) -> dict[str, ProfileSettings]:
        with self.db.connect() as conn:
            rows = self._prepared(("profiles",), lambda: select(*_PROFILE_COLUMNS)).fetchall(
                conn, {}, _PROFILE_COLUMNS)
        return {
            r[0]: ProfileSettings(
                id=r[0],
                name=r[1],
                ownerid=r[2],
                active=r[3] == 0,
                minpollingintervalinminutes=r[4],
                maxconcurrentconnections=r[5],
                moveundeliveredemails=r[6],
                processemailsreceivedafter=r[7],
                timeoutmailboxconnection=r[8],
                timeoutmailboxconnectionafteramount=r[9],
                ewsurl=r[10],
                useautodiscover=r[11],
            )
            for r in rows
        }
