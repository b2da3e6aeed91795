"""The administrator's operations on the fake organization (SPEC section 1), with their checks.

Every operation runs as a named user whose security roles are checked, validates its fields
(an error names the field), and writes nothing when it refuses.
"""

from __future__ import annotations

from sqlalchemy import Engine

from engine.clock import Clock
from engine.ports import ExchangePort
from simulator.crm.act_filters import SyncFiltersMixin
from simulator.crm.admin_act import ActAdminMixin, FieldDirection  # noqa: F401  (re-exported)
from simulator.crm.admin_enable import (  # noqa: F401  (re-exported)
    ALERT_EMAIL_WINDOW,
    JOB_PROGRESS_STEPS,
    TEST_ENABLE_JOB,
    EnableMixin,
    test_result_view,
)
from simulator.crm.admin_mailboxes import MailboxesMixin
from simulator.crm.admin_org import (  # noqa: F401  (Prerequisite and simulator.crm.errors' errors re-exported)
    AdminError,
    ConflictError,
    OrgMixin,
    OutOfOrderError,
    Prerequisite,
    PrivilegeError,
    UnknownUserError,
    ValidationError,
)
from simulator.crm.admin_profiles import (  # noqa: F401  (re-exported)
    AUTHENTICATION_FAILURE_CODE,
    ConnectionCheck,
    ConnectionProbe,
    ConnectionTest,
    ProfilesMixin,
    validate_profile,
)
from simulator.crm.admin_settings import (  # noqa: F401  (re-exported)
    ACT_OPTIONS,
    INCOMING_OPTIONS,
    METHODS,
    OUTGOING_OPTIONS,
    SETTINGS_FIELDS,
    SettingsMixin,
    method_value,
)
from simulator.crm.admin_views import MailboxView, ViewsMixin  # noqa: F401  (MailboxView re-exported)
from simulator.crm.inputs import METHOD_FIELDS, ORG_SWITCHES, PROFILE_FIELDS  # noqa: F401  (re-exported)
from simulator.crm.operations import (  # noqa: F401  (the roles and privileges re-exported)
    ALL_PRIVILEGES,
    OPERATIONS,
    PRIVILEGE_NAMES,
    PRV_ADMIN,
    PRV_APPROVE,
    PRV_READ_MAILBOX,
    PRV_WRITE_MAILBOX,
    SALESPERSON,
    SYSTEM_ADMINISTRATOR,
    out_of_order,
)
from simulator.crm.platform import IdFactory, Platform


class Admin(OrgMixin, ProfilesMixin, SettingsMixin, MailboxesMixin, EnableMixin, ViewsMixin, ActAdminMixin,
            SyncFiltersMixin):
    """Administrative operations; each takes the acting user (``as_user``: a domain name or id).

    ``probe`` does the service checks of Test Connection (wire mode gives one); ``exchange``
    serves Test & Enable.

    Each concern lives in its own module, as a mixin: :mod:`~simulator.crm.admin_org` (organization,
    users, roles, records; the acting user's checks), :mod:`~simulator.crm.admin_profiles` (email
    server profiles, Test Connection), :mod:`~simulator.crm.admin_settings` (organization settings),
    :mod:`~simulator.crm.admin_mailboxes` (mailboxes, approval), :mod:`~simulator.crm.admin_enable`
    (Test & Enable, async jobs), :mod:`~simulator.crm.admin_views` (views), :mod:`~simulator.crm.admin_act`
    (the directions of the fields of appointments, contacts and tasks), :mod:`~simulator.crm.act_filters` (users'
    ACT sync filters).
    """

    def __init__(self, db: Engine, clock: Clock, platform: Platform, exchange: ExchangePort,
                 ids: IdFactory, on_mailbox_added=None, probe: ConnectionProbe | None = None) -> None:
        self.db = db
        self.clock = clock
        self.platform = platform
        self.exchange = exchange
        self.ids = ids
        self.on_mailbox_added = on_mailbox_added  # callback(address, display name): create the Exchange mailbox
        self.probe = probe
        self.on_settings_changed = None  # callback(): a running sandbox forgets what it cached of profiles
