"""Error taxonomy of server-side sync: scope x nature, and the known codes (SPEC section 4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Nature(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class Scope(StrEnum):
    ITEM = "item"
    MAILBOX = "mailbox"
    PROFILE = "profile"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    code: str
    nature: Nature
    scope: Scope
    summary: str


def _k(code: str, nature: Nature, scope: Scope, summary: str) -> tuple[str, ErrorKind]:
    return code, ErrorKind(code, nature, scope, summary)


T, P = Nature.TRANSIENT, Nature.PERMANENT
KNOWN_ERRORS: dict[str, ErrorKind] = dict(
    [
        # CRM-side codes for Exchange access problems.
        _k("8005E272", P, Scope.MAILBOX, "Exchange answered 401 Unauthorized for the connecting account"),
        _k("8005E274", P, Scope.MAILBOX, "The mailbox is not enabled for Exchange Web Services"),
        _k("8005E259", P, Scope.MAILBOX, "The connecting account lacks the privileges it needs on the mailbox"),
        _k("8005E273", P, Scope.MAILBOX, "The user is disabled"),
        _k("8005E276", P, Scope.MAILBOX, "The mailbox has no Exchange license or its access mode forbids it"),
        _k("AuthenticationFailure", P, Scope.PROFILE,
           "Server-to-server authentication failed: the certificate is missing, expired or not the registered one"),
        _k("TokenServiceUnavailable", T, Scope.PROFILE,
           "The identity service could not issue a token (unreachable, or it answered HTTP 5xx)"),
        _k("MailboxNotApproved", P, Scope.MAILBOX,
           "The email address is not approved; an administrator must approve it before mail is processed"),
        _k("ConfiguredWithAnotherOrganization", P, Scope.MAILBOX,
           "The Exchange mailbox syncs appointments, contacts and tasks with another organization"),
        _k("ActFolderNotAccessible", P, Scope.MAILBOX,
           "A Calendar, Contacts or Tasks folder of the Exchange mailbox cannot be reached"),
        # EWS response codes.
        _k("ErrorExceededConnectionCount", T, Scope.MAILBOX, "Too many concurrent connections to the mailbox"),
        _k("ErrorServerBusy", T, Scope.MAILBOX, "Exchange is busy and asked to back off"),
        # Over the storage quota, nothing changes until the owner frees space: permanent (SPEC 3.5
        # groups it with the credential errors). Over the sending rate, the next minute or day lets
        # mail through again: transient.
        _k("ErrorQuotaExceeded", P, Scope.MAILBOX,
           "The mailbox is over its Exchange storage quota (403); its owner must free space in it"),
        _k("ErrorSubmissionQuotaExceeded", T, Scope.MAILBOX,
           "The mailbox sent more messages than Exchange allows per minute or per day"),
        _k("ErrorMailboxStoreUnavailable", T, Scope.MAILBOX, "The mailbox store is unavailable"),
        _k("ErrorNonExistentMailbox", P, Scope.MAILBOX, "The mailbox does not exist in Exchange"),
        _k("ErrorAccessDenied", P, Scope.MAILBOX, "Exchange denied access to the mailbox"),
        _k("ErrorInternalServerError", T, Scope.MAILBOX, "Exchange reported an internal error"),
        _k("ErrorTimeoutExpired", T, Scope.MAILBOX, "The Exchange call took longer than the profile allows"),
        _k("HttpServiceUnavailable", T, Scope.MAILBOX, "Exchange answered HTTP 503"),
        _k("HttpInternalServerError", T, Scope.MAILBOX, "Exchange answered HTTP 500"),
        _k("NetworkError", T, Scope.MAILBOX, "The connection to Exchange failed"),
        # Item-level codes.
        _k("NoCorrelationMatch", P, Scope.ITEM, "The email does not answer or reference a tracked email"),
        _k("NoRecipientMatch", P, Scope.ITEM, "No recipient resolves to a user or queue of the organization"),
        _k("IsvAborted", P, Scope.ITEM, "A plug-in of the organization refused to create the activity"),
        _k("MalformedMessage", P, Scope.ITEM, "The message cannot be read (its headers are broken)"),
        _k("MessageTooLarge", P, Scope.ITEM, "The message is larger than Exchange lets become an activity"),
        _k("SendFailed", P, Scope.ITEM, "The email could not be sent after repeated attempts"),
    ]
)


def kind_of(code: str) -> ErrorKind:
    """The kind of a code; an unknown code counts as a transient mailbox error."""
    kind = KNOWN_ERRORS.get(code)
    if kind is None:
        return ErrorKind(code, Nature.TRANSIENT, Scope.MAILBOX, f"Unrecognised error {code}")
    return kind


class SyncError(Exception):
    """An error the engine knows how to handle: it carries a code from :data:`KNOWN_ERRORS`."""

    def __init__(self, code: str, detail: str = "", *, backoff_ms: int | None = None) -> None:
        self.code = code
        self.kind = kind_of(code)
        self.detail = detail or self.kind.summary
        self.backoff_ms = backoff_ms
        super().__init__(f"{code}: {self.detail}")

    @property
    def nature(self) -> Nature:
        return self.kind.nature

    @property
    def scope(self) -> Scope:
        return self.kind.scope

    @property
    def transient(self) -> bool:
        return self.kind.nature is Nature.TRANSIENT


class ExchangeError(SyncError):
    """An error answered by Exchange (an EWS response code or an HTTP failure)."""


class TokenError(SyncError):
    """The token source could not get an access token: ``AuthenticationFailure`` (permanent: the
    credentials were refused) or ``TokenServiceUnavailable`` (transient: the identity service was
    unreachable or failed, SPEC 4)."""

    def __init__(self, detail: str, code: str = "AuthenticationFailure") -> None:
        super().__init__(code, detail)
