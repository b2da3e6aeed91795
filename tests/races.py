"""Races between engine hosts, made to happen at a chosen moment."""

from __future__ import annotations

from simulator.crm.platform_sql import EMAIL_COLUMNS, E

OTHER_HOSTS_ACTIVITY = "00000000-0000-4000-8000-00000000beef"


def another_host_tracks_first(sb, item_id: str) -> list[str]:
    """Right before ``sb``'s next release, another host commits its own copy of the message that
    ``sb``'s batch tracked from the Exchange item ``item_id`` (the same duplicate key, another
    mailbox and item): the race two hosts run when each tracks one copy of a message sent to two
    users. Returns a list that gets the activity id ``sb`` had given the message once the race ran."""
    write_release = sb.crm._write_release
    raced: list[str] = []

    def other_host_first(hostid, updates, free=()):
        if not raced:
            mine = next(e for e in sb.crm._emails if e[EMAIL_COLUMNS.index("exchangeitemid")] == item_id)
            theirs = list(mine)
            theirs[EMAIL_COLUMNS.index("activityid")] = OTHER_HOSTS_ACTIVITY
            theirs[EMAIL_COLUMNS.index("receivingmailboxid")] = None
            theirs[EMAIL_COLUMNS.index("exchangeitemid")] = "AAMk-the-other-copy"
            with sb.db.begin() as conn:
                sb.crm._insert_tuples(conn, E, EMAIL_COLUMNS, [tuple(theirs)])
            raced.append(mine[EMAIL_COLUMNS.index("activityid")])
        return write_release(hostid, updates, free)

    sb.crm._write_release = other_host_first
    return raced


def org_without_act(db_url: str):
    """The suite's organization (seed 0) in ``db_url`` with ACT off in every mailbox: an ACT cycle
    writes the claim on the mailbox, an Exchange operation, which a batch that only tracks mail
    does not make."""
    from simulator.testing import build_org

    o = build_org(0, db_url=db_url)
    for address in o.mailboxes:
        o.set_mailbox(address, actdeliverymethod=2)
    return o
