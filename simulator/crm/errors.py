"""Refusals of the CRM's administrative operations (kept light: the CLI imports them at start)."""

from __future__ import annotations


class AdminError(ValueError):
    """An operation refused; ``field`` names the offending input where there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ValidationError(AdminError):
    """A field value is wrong (missing, malformed, out of range)."""


class ConflictError(ValidationError):
    """The value is taken: a name or address that already exists."""


class PrivilegeError(AdminError):
    """The acting user lacks a privilege the operation needs."""


class UnknownUserError(AdminError):
    """The acting user does not exist or is disabled."""


class OutOfOrderError(AdminError):
    """A step of the setup flow attempted before the step it depends on."""
