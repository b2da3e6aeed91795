"""What became of the mail of an organization, counted from its rows: the one place the demo, the
scenario runner and others read the totals from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from simulator.crm.models import EmailStatus
from simulator.crm.platform_sql import E, T, X

ALERT_LEVEL_NAMES = {1: "information", 2: "warning", 3: "error"}


def mail_outcomes(conn: Connection) -> dict[str, Any]:
    """Counts of tracked, skipped (by reason), undeliverable (by reason), sent, pending send and
    failed-to-send email, and of alerts by level."""
    by_status = dict(conn.execute(select(E.c.statuscode, func.count()).group_by(E.c.statuscode)).all())
    skipped = dict(conn.execute(select(X.c.lastsyncerror, func.count()).where(X.c.itemstate == 2)
                                .group_by(X.c.lastsyncerror).order_by(X.c.lastsyncerror)).all())
    failed = dict(conn.execute(select(X.c.lastsyncerror, func.count()).where(
        X.c.itemstate == 3, X.c.objecttypecode == "email", X.c.exchangeentryid != "")
        .group_by(X.c.lastsyncerror).order_by(X.c.lastsyncerror)).all())
    alerts = dict(conn.execute(select(T.c.level, func.count()).group_by(T.c.level)).all())
    return {
        "tracked": by_status.get(EmailStatus.RECEIVED, 0),
        "skipped": sum(skipped.values()),
        "skipped_reasons": skipped,
        "undeliverable": sum(failed.values()),
        "undeliverable_reasons": failed,
        "sent": by_status.get(EmailStatus.SENT, 0),
        "pending_send": by_status.get(EmailStatus.PENDING_SEND, 0),
        "failed_to_send": by_status.get(EmailStatus.FAILED, 0),
        "alerts": {name: alerts.get(level, 0) for level, name in ALERT_LEVEL_NAMES.items()},
    }
