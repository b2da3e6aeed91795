"""The organization's email settings (SPEC 1.6, 2.2) and the delivery method options (SPEC 2.3)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from engine.ports import ActMethod, IncomingMethod, OutgoingMethod
from simulator.crm.admin_org import _require
from simulator.crm.errors import ValidationError
from simulator.crm.inputs import METHOD_FIELDS, ORG_SWITCHES, SettingsInput, parse
from simulator.crm.models import EmailServerProfile

# option names accepted for the delivery methods (SPEC 2.3), besides their numbers
INCOMING_OPTIONS = {"none": 0, "outlook": 1, "sss": 2, "server-side-synchronization": 2, "email-router": 2,
                    "forward-mailbox": 3}
OUTGOING_OPTIONS = {"none": 0, "outlook": 1, "sss": 2, "server-side-synchronization": 2, "email-router": 2}
ACT_OPTIONS = {"outlook": 0, "sss": 1, "server-side-synchronization": 1, "none": 2}
METHODS = {"incomingemaildeliverymethod": (IncomingMethod, INCOMING_OPTIONS),
           "outgoingemaildeliverymethod": (OutgoingMethod, OUTGOING_OPTIONS),
           "actdeliverymethod": (ActMethod, ACT_OPTIONS)}
SETTINGS_FIELDS = ("emailconnectionchannel", "defaultemailserverprofileid", *METHOD_FIELDS, *ORG_SWITCHES,
                   "trackingprefix", "s2stenantid", "maxuploadfilesize")


def method_value(field: str, value: Any) -> int:
    """A delivery method given by number or name (``sss``, ``outlook``, ``none``, ...)."""
    enum, names = METHODS[field]
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "-").replace("_", "-")
        if key in names:
            return names[key]
        if key.isdigit():
            value = int(key)
    if isinstance(value, int) and not isinstance(value, bool) and value in {m.value for m in enum}:
        return int(value)
    options = ", ".join(f"{n} {m.name.lower()}" for n, m in ((m.value, m) for m in enum))
    raise ValidationError(f"{value!r} is not an option ({options})", field)


class SettingsMixin:
    """The organization's email settings: show them, change them, the default profile, the switches.

    Relies on ``self``: ``db``, and the helpers ``_check``, ``_org``, ``_changed`` (:class:`OrgMixin`),
    ``_profile`` (:class:`ProfilesMixin`).
    """

    def settings(self) -> dict[str, Any]:
        """The organization's email settings (SPEC 2.2), with the default profile's name."""
        with Session(self.db) as session:
            org = self._org(session)
            view = {k: getattr(org, k) for k in SETTINGS_FIELDS}
            view["name"] = org.name
            view["organizationid"] = org.organizationid
            profile = session.get(EmailServerProfile, org.defaultemailserverprofileid or "")
            view["defaultemailserverprofile"] = profile.name if profile else None
            return view

    def set_settings(self, as_user: str, **fields: Any) -> None:
        """Change organization email settings: default profile (id or name), delivery methods, switches."""
        given = parse(SettingsInput, fields).given()
        with Session(self.db) as session:
            self._check(session, as_user, "settings set")
            org = self._org(session)
            values: dict[str, Any] = {}
            for key, value in given.items():
                if key == "defaultemailserverprofileid":
                    values[key] = self._profile(session, value, key).emailserverprofileid
                elif key in METHODS:
                    values[key] = method_value(key, value)
                else:
                    values[key] = value
            for key, value in values.items():
                setattr(org, key, value)
            session.add(org)
            session.commit()
        self._changed()

    def set_default_profile(self, as_user: str, profileid: str, *, incoming: int = IncomingMethod.SSS,
                            outgoing: int = OutgoingMethod.SSS, act: int = ActMethod.SSS) -> None:
        """SPEC 1.6: the organization's default profile and delivery methods."""
        self.set_settings(as_user, defaultemailserverprofileid=profileid, incomingemaildeliverymethod=incoming,
                          outgoingemaildeliverymethod=outgoing, actdeliverymethod=act)

    def update_org(self, as_user: str, **fields: Any) -> None:
        """Change organization switches (alerts, approval, correlation, tracking tokens)."""
        for key in fields:
            _require(key in ORG_SWITCHES, key, "is not an organization switch")
        self.set_settings(as_user, **fields)
