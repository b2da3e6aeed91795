"""Mailbox settings: GetInboxRules, UpdateInboxRules, GetUserOofSettings, SetUserOofSettings.

Both live in the store as events (:meth:`ExchangeStore.set_inbox_rules`, ``set_oof_settings``), so
they are journaled and survive a replay. These operations answer in one ``m:<Op>Response`` with
``ResponseClass`` and ``ResponseCode`` on the response itself, not a list of response messages.

Inbox rules: a rule is kept as a record ``{"id", "name", "priority", "enabled", "conditions",
"exceptions", "actions"}`` whose last three are the request's ``t:Conditions`` / ``t:Exceptions`` /
``t:Actions`` as XML text (folder references in actions resolved to folder ids, as Exchange returns
them). An UpdateInboxRules request is validated as a whole: any invalid operation fails it with
``ErrorInboxRulesValidationError`` and a ``RuleOperationErrors`` list naming the operation, the
field (``Action:MoveToFolder``, ``DisplayName`` ...), a validation code and a message; nothing is
changed then. Priorities are kept dense (1..n): a rule created or set at priority p goes before the
rule that had p.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta

from lxml import etree

from simulator.exchange.ews.context import Context, change_key, flat_response, response_message
from simulator.exchange.ews.xml import (
    EwsFault,
    ResponseError,
    clean_text,
    el,
    format_datetime,
    m,
    parse_bool,
    parse_datetime,
    sub,
    t,
    xml_bool,
)
from simulator.exchange.store import StoreError

MAX_RULE_NAME = 256
_UNSUPPORTED_ACTIONS = ("SendSMSAlertToRecipients",)
_ADDRESS_ACTIONS = ("ForwardAsAttachmentToRecipients", "ForwardToRecipients", "RedirectToRecipients")
_FOLDER_ACTIONS = ("CopyToFolder", "MoveToFolder")
_IMPORTANCE = ("Low", "Normal", "High")


def _target_mailbox(ctx: Context, address: str | None) -> str:
    """The mailbox a settings request names: the one the request acts on (another one is refused)."""
    mbx = ctx.need_mailbox()
    address = (address or "").strip().lower()
    if not address or address == mbx.address:
        return mbx.address
    if address not in ctx.store.mailboxes:
        raise ResponseError("ErrorMailRecipientNotFound", f"the recipient {address!r} is not found in the directory")
    raise ResponseError("ErrorAccessDenied", f"the request acts on {mbx.address}; it cannot open {address}'s settings")


# -- Inbox rules ---------------------------------------------------------------------------
_BOOLEANS = {"1": "true", "true": "true", "0": "false", "false": "false"}


def _xml_text(elem: etree._Element) -> str:
    """A rule part as XML text, as Exchange gives it back: booleans as true/false, no stray namespaces."""
    part = copy.deepcopy(elem)
    for child in part:
        if isinstance(child.tag, str) and len(child) == 0 and (child.text or "").strip().lower() in _BOOLEANS:
            child.text = _BOOLEANS[child.text.strip().lower()]
    etree.cleanup_namespaces(part)
    return etree.tostring(part, encoding="unicode")


def _xml_from(text: str) -> etree._Element:
    return etree.fromstring(text, parser=etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))


def rule_element(rule: dict) -> etree._Element:
    e = el("t:Rule")
    sub(e, "t:RuleId", rule["id"])
    sub(e, "t:DisplayName", rule["name"])
    sub(e, "t:Priority", str(rule["priority"]))
    sub(e, "t:IsEnabled", xml_bool(rule["enabled"]))
    sub(e, "t:IsNotSupported", "false")
    sub(e, "t:IsInError", "false")
    for key in ("conditions", "exceptions", "actions"):
        if rule.get(key):
            e.append(_xml_from(rule[key]))
    return e


def get_inbox_rules(ctx: Context, req: etree._Element) -> etree._Element:
    try:
        address = _target_mailbox(ctx, req.findtext(m("MailboxSmtpAddress")))
    except ResponseError as exc:
        return flat_response("GetInboxRules", exc.code, exc.message)
    rules = ctx.store.inbox_rules(address)
    out = flat_response("GetInboxRules")
    sub(out, "m:OutlookRuleBlobExists", "false")
    if rules:
        container = sub(out, "m:InboxRules")
        for rule in rules:
            container.append(rule_element(rule))
    return out


class _Invalid(Exception):
    def __init__(self, field: str, code: str, message: str, value: str | None = None) -> None:
        super().__init__(message)
        self.field, self.code, self.message, self.value = field, code, message, value


def _children(elem: etree._Element | None) -> list[etree._Element]:
    return [c for c in elem if isinstance(c.tag, str)] if elem is not None else []


def _check_addresses(ctx: Context, action: etree._Element, name: str) -> None:
    addresses = [a for a in _children(action) if a.tag == t("Address")]
    if not addresses:
        raise _Invalid(f"Action:{name}", "EmptyValueFound", "The value is empty.")
    for address in addresses:
        email = (address.findtext(t("EmailAddress")) or "").strip()
        if not email or "@" not in email:
            raise _Invalid(f"Action:{name}", "InvalidAddress", "The e-mail address is invalid.", email or None)


def _resolve_folder(ctx: Context, action: etree._Element, name: str) -> None:
    """Replace the folder reference of a Move/CopyToFolder action by the folder's id."""
    refs = ctx.folder_refs(action)
    if len(refs) != 1:
        raise _Invalid(f"Action:{name}", "EmptyValueFound", "The folder id is missing.")
    try:
        folder = ctx.folder(refs[0])
    except ResponseError:
        raise _Invalid(f"Action:{name}", "FolderDoesNotExist", "The folder does not exist.",
                       refs[0].get("Id")) from None
    for ref in refs:
        action.remove(ref)
    action.append(el("t:FolderId", {"Id": folder.folder_id, "ChangeKey": change_key(folder.folder_id)}))


def _check_actions(ctx: Context, actions: etree._Element | None) -> etree._Element:
    items = _children(actions)
    if actions is None or not items:
        raise _Invalid("Actions", "MissingAction", "A rule must have at least one action.")
    for action in items:
        name = etree.QName(action).localname
        if name in _UNSUPPORTED_ACTIONS:
            raise _Invalid(f"Action:{name}", "UnsupportedRule", "The operation on this unsupported rule is not allowed.")
        if name == "ServerReplyWithMessage":
            # Exchange wants the id of a reply template (an associated item the simulator does not keep)
            raise _Invalid(f"Action:{name}", "InvalidValue", "Id must be non-empty.")
        if name in _ADDRESS_ACTIONS:
            _check_addresses(ctx, action, name)
        elif name in _FOLDER_ACTIONS:
            _resolve_folder(ctx, action, name)
        elif name == "MarkImportance" and (action.text or "").strip() not in _IMPORTANCE:
            raise _Invalid(f"Action:{name}", "InvalidValue", "The importance is not valid.", action.text)
        elif name == "AssignCategories" and not [c for c in _children(action) if (c.text or "").strip()]:
            raise _Invalid(f"Action:{name}", "EmptyValueFound", "The value is empty.")
    return actions


def _rule_record(ctx: Context, spec: etree._Element, rule_id: str) -> dict:
    name = (spec.findtext(t("DisplayName")) or "").strip()
    if not name:
        raise _Invalid("DisplayName", "EmptyValueFound", "The value is empty.")
    if len(name) > MAX_RULE_NAME:
        raise _Invalid("DisplayName", "StringValueTooBig", f"The string is longer than {MAX_RULE_NAME} characters.")
    priority_text = (spec.findtext(t("Priority")) or "").strip()
    try:
        priority = int(priority_text)
    except ValueError:
        raise _Invalid("Priority", "InvalidValue", "The priority must be a whole number.", priority_text) from None
    if priority < 1:
        raise _Invalid("Priority", "InvalidValue", "The priority must be greater than 0.", priority_text)
    enabled_text = spec.findtext(t("IsEnabled"))
    record = {"id": rule_id, "name": clean_text(name), "priority": priority,
              "enabled": True if enabled_text is None else parse_bool(enabled_text),
              "conditions": None, "exceptions": None, "actions": None}
    for key, tag in (("conditions", "Conditions"), ("exceptions", "Exceptions")):
        part = spec.find(t(tag))
        if part is not None and _children(part):
            record[key] = _xml_text(part)
    record["actions"] = _xml_text(_check_actions(ctx, spec.find(t("Actions"))))
    return record


def _place(rules: list[dict], record: dict) -> None:
    """Insert ``record`` before the rule that has its priority (at the end when none has)."""
    at = next((i for i, r in enumerate(rules) if r["priority"] >= record["priority"]), len(rules))
    rules.insert(at, record)


def _rule_error(index: int, exc: _Invalid) -> etree._Element:
    error = el("t:RuleOperationError")
    sub(error, "t:OperationIndex", str(index))
    errors = sub(error, "t:ValidationErrors")
    one = sub(errors, "t:Error")
    sub(one, "t:FieldURI", exc.field)
    sub(one, "t:ErrorCode", exc.code)
    sub(one, "t:ErrorMessage", exc.message)
    sub(one, "t:FieldValue", exc.value or "")
    return error


def update_inbox_rules(ctx: Context, req: etree._Element) -> etree._Element:
    try:
        address = _target_mailbox(ctx, req.findtext(m("MailboxSmtpAddress")))
    except ResponseError as exc:
        return flat_response("UpdateInboxRules", exc.code, exc.message)
    operations = _children(req.find(m("Operations")))
    if not operations:
        raise EwsFault("ErrorSchemaValidation",
                       "The request failed schema validation: UpdateInboxRules needs m:Operations with an operation")
    rules = ctx.store.inbox_rules(address)
    failures: list[etree._Element] = []
    touched: set[str] = set()
    for index, op in enumerate(operations):
        kind = etree.QName(op).localname
        try:
            if kind == "CreateRuleOperation":
                spec = op.find(t("Rule"))
                if spec is None:
                    raise _Invalid("Rule", "MissingParameter", "The rule is missing.")
                if (spec.findtext(t("RuleId")) or "").strip():
                    raise _Invalid("RuleId", "CreateWithRuleId", "A rule cannot be created with a rule id.",
                                   spec.findtext(t("RuleId")))
                record = _rule_record(ctx, spec, ctx.store.new_rule_id())
                _place(rules, record)
                touched.add(record["id"])
            elif kind in ("SetRuleOperation", "DeleteRuleOperation"):
                spec = op.find(t("Rule")) if kind == "SetRuleOperation" else op
                if spec is None:
                    raise _Invalid("Rule", "MissingParameter", "The rule is missing.")
                rule_id = (spec.findtext(t("RuleId")) or "").strip()
                if not rule_id:
                    raise _Invalid("RuleId", "MissingParameter", "The rule id is missing.")
                if rule_id in touched:
                    raise _Invalid("RuleId", "DuplicatedOperationOnTheSameRule",
                                   "The same rule cannot be changed twice in one request.", rule_id)
                current = next((r for r in rules if r["id"] == rule_id), None)
                if current is None:
                    raise _Invalid("RuleId", "RuleNotFound", "Rule not found.", rule_id)
                touched.add(rule_id)
                rules.remove(current)
                if kind == "SetRuleOperation":
                    _place(rules, _rule_record(ctx, spec, rule_id))
            else:
                raise EwsFault("ErrorSchemaValidation",
                               f"The request failed schema validation: {kind} is not a rule operation")
        except _Invalid as exc:
            failures.append(_rule_error(index, exc))
    if failures:
        out = flat_response("UpdateInboxRules", "ErrorInboxRulesValidationError",
                            "A validation error occurred while executing the rule operation.")
        container = sub(out, "m:RuleOperationErrors")
        for failure in failures:
            container.append(failure)
        return out
    for priority, rule in enumerate(rules, start=1):
        rule["priority"] = priority
    ctx.store.set_inbox_rules(address, rules)
    return flat_response("UpdateInboxRules")


# -- Out of Office ---------------------------------------------------------------------------
OOF_STATES = ("Enabled", "Scheduled", "Disabled")
AUDIENCES = ("None", "Known", "All")


def _default_oof(now: datetime) -> dict:
    """What Exchange answers for a mailbox whose OOF was never set: disabled, a day from the hour."""
    start = now.replace(minute=0, second=0, microsecond=0)
    return {"state": "Disabled", "audience": "All", "start": format_datetime(start),
            "end": format_datetime(start + timedelta(days=1)), "internal": "", "external": ""}


def _request_address(req: etree._Element) -> str | None:
    box = req.find(t("Mailbox"))
    return box.findtext(t("Address")) if box is not None else None


def _oof_response(operation: str, code: str = "NoError", text: str | None = None) -> etree._Element:
    root = el(f"m:{operation}Response")
    response_message("m:ResponseMessage", code, text, parent=root)
    return root


def _reply(tag: str, text: str) -> etree._Element:
    return el(tag, None, None, el("t:Message", None, text))


def get_user_oof_settings(ctx: Context, req: etree._Element) -> etree._Element:
    try:
        address = _target_mailbox(ctx, _request_address(req))
    except ResponseError as exc:
        return _oof_response("GetUserOofSettings", exc.code, exc.message)
    oof = ctx.store.oof_settings(address) or _default_oof(ctx.now)
    out = _oof_response("GetUserOofSettings")
    settings = sub(out, "t:OofSettings")
    sub(settings, "t:OofState", oof["state"])
    sub(settings, "t:ExternalAudience", oof["audience"])
    duration = sub(settings, "t:Duration")
    sub(duration, "t:StartTime", oof["start"])
    sub(duration, "t:EndTime", oof["end"])
    settings.append(_reply("t:InternalReply", oof["internal"]))
    settings.append(_reply("t:ExternalReply", oof["external"]))
    sub(out, "m:AllowExternalOof", "All")
    return out


def _oof_record(ctx: Context, spec: etree._Element, previous: dict) -> dict:
    state = (spec.findtext(t("OofState")) or "").strip()
    if state not in OOF_STATES:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: OofState {state!r} is not one "
                                                f"of {', '.join(OOF_STATES)}")
    audience = (spec.findtext(t("ExternalAudience")) or "All").strip()
    if audience not in AUDIENCES:
        raise EwsFault("ErrorSchemaValidation", f"The request failed schema validation: ExternalAudience "
                                                f"{audience!r} is not one of {', '.join(AUDIENCES)}")
    record = dict(previous, state=state, audience=audience)
    duration = spec.find(t("Duration"))
    if duration is not None:
        start = parse_datetime((duration.findtext(t("StartTime")) or "").strip())
        end = parse_datetime((duration.findtext(t("EndTime")) or "").strip())
        if end <= start:
            raise ResponseError("ErrorInvalidParameter", "the OOF duration's EndTime must be after its StartTime")
        if state == "Scheduled" and end <= ctx.now:
            raise ResponseError("ErrorOofCannotBeSetInPast", "the scheduled OOF duration ends in the past")
        record["start"], record["end"] = format_datetime(start), format_datetime(end)
    elif state == "Scheduled":
        raise ResponseError("ErrorInvalidParameter", "a Scheduled OOF needs a Duration")
    for key, tag in (("internal", "InternalReply"), ("external", "ExternalReply")):
        reply = spec.find(t(tag))
        if reply is not None:
            record[key] = clean_text(reply.findtext(t("Message")) or "")
    return record


def set_user_oof_settings(ctx: Context, req: etree._Element) -> etree._Element:
    spec = req.find(t("UserOofSettings"))
    if spec is None:
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: SetUserOofSettingsRequest "
                                                "needs t:UserOofSettings")
    try:
        address = _target_mailbox(ctx, _request_address(req))
        previous = ctx.store.oof_settings(address) or _default_oof(ctx.now)
        ctx.store.set_oof_settings(address, _oof_record(ctx, spec, previous))
    except ResponseError as exc:
        return _oof_response("SetUserOofSettings", exc.code, exc.message)
    except StoreError as exc:
        return _oof_response("SetUserOofSettings", exc.code, exc.message)
    return _oof_response("SetUserOofSettings")


OPERATIONS = {
    "GetInboxRules": get_inbox_rules,
    "UpdateInboxRules": update_inbox_rules,
    "GetUserOofSettingsRequest": get_user_oof_settings,
    "SetUserOofSettingsRequest": set_user_oof_settings,
}
