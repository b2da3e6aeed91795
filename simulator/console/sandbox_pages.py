"""The console's "Sandbox" pages: the trainer's controls of the sandbox around the CRM.

* **Clock and engine**: the sandbox clock (virtual or real); "Advance the clock" by days, hours
  and minutes without running anything (``sss clock advance``, :meth:`Sandbox.advance_clock`);
  "Run the engine" for a span of sandbox time (``sss run``, :meth:`Sandbox.run_engine`: the Test &
  Enable jobs left waiting, then the engine, in slices under the console's lock as ``POST
  /_sim/clock/advance`` runs them), then the engine's counters.
* **Fault rules**: every rule with every field and how often it fired; add one (the fields of
  ``sss fault add`` and ``POST /_sim/faults``, checked by :func:`simulator.crm.inputs.fault_rule`);
  remove them all.

These pages are the trainer's: only a user with the System Administrator role may open them (403
for anyone else). A refused value re-renders the form with 400 and names its field; nothing is
written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlmodel import Session

from simulator.console import PREFIX, Problem, problem
from simulator.control import client_gone
from simulator.crm import inputs
from simulator.crm.errors import AdminError, ValidationError
from simulator.crm.s2s import require_system_administrator
from simulator.faults import describe

if TYPE_CHECKING:
    from simulator.console import Console

SECTION = "Sandbox"
ADVANCE_LABELS = {"days": "Days", "hours": "Hours", "minutes": "Minutes"}
RUN_LABELS = {"run_minutes": "Run the engine for minutes", "run_hours": "Run the engine for hours"}
FAULT_LABELS = {"code": "Error code", "protocol": "Protocol", "operation": "Operation", "mailbox": "Mailbox",
                "count": "Count", "probability": "Probability", "backoff_ms": "Back-off (ms)",
                "latency_ms": "Latency (ms)", "start": "Start", "minutes": "Window (minutes)"}
COUNTERS = (("polls", "Workload polls"), ("tracked", "Emails tracked"), ("skipped", "Emails skipped"),
            ("undeliverable", "Emails undeliverable"), ("sent", "Emails sent"),
            ("send_failed", "Emails failed to send"), ("errors", "Errors"))


def counters(stats) -> dict[str, Any]:
    """The engine's counters (:class:`engine.service.EngineStats`) as the page shows them."""
    return {"polls": stats.polls, "tracked": stats.emails_tracked, "skipped": sum(stats.emails_skipped.values()),
            "undeliverable": stats.emails_undeliverable, "sent": stats.emails_sent,
            "send_failed": stats.emails_send_failed, "errors": sum(stats.errors.values()),
            "skipped_by": dict(stats.emails_skipped), "errors_by": dict(stats.errors)}


def _given(form: dict[str, Any], names: dict[str, str], prefix: str = "") -> dict[str, str]:
    """The fields of a form that were filled in (an empty field is not given), by model field."""
    return {name[len(prefix):]: form[name].strip() for name in names
            if isinstance(form.get(name), str) and form[name].strip()}


class SandboxPages:
    """The pages, over the console's sandbox and lock."""

    nav = ((SECTION, "/sandbox/clock", "Clock and engine"), (SECTION, "/sandbox/faults", "Fault rules"))

    def __init__(self, console: Console) -> None:
        self.console = console
        self.sb = console.sb

    def trainer(self, handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]):
        """A page for a signed-in System Administrator (403 for anyone else)."""

        async def checked(request: web.Request, user: str) -> web.StreamResponse:
            try:
                with Session(self.sb.db) as session:
                    require_system_administrator(session, user)
            except AdminError as exc:
                return self.console.render(
                    request, "message.html", status=403, user=user, title="Sandbox",
                    text=f"These pages are the trainer's: only a user with the System Administrator role may "
                         f"use them ({problem(exc).message}). Sign in as an administrator.")
            return await handler(request, user)

        return self.console.page(checked)

    # -- clock and engine ----------------------------------------------------------------------------
    def _clock_page(self, request: web.Request, user: str, *, status: int = 200, problem_: Problem | None = None,
                    values: dict[str, Any] | None = None, run: dict[str, Any] | None = None) -> web.Response:
        return self.console.render(
            request, "sandbox_clock.html", status=status, user=user, problem=problem_, values=values or {},
            virtual=self.sb.clock.is_virtual, totals=counters(self.sb.engine.stats), run=run, COUNTERS=COUNTERS,
            labels={**ADVANCE_LABELS, **RUN_LABELS})

    async def clock(self, request: web.Request, user: str) -> web.StreamResponse:
        return self._clock_page(request, user)

    async def advance(self, request: web.Request, user: str) -> web.StreamResponse:
        form = await self.console.form(request)
        try:
            span = inputs.parse(inputs.ClockAdvanceInput, _given(form, ADVANCE_LABELS), strict=False).span()
            now = await self.console.locked(lambda: self.sb.advance_clock(span))
        except Exception as exc:
            p = problem(exc)
            return self._clock_page(request, user, status=p.status, problem_=p, values=form)
        return self.console.redirect(f"{PREFIX}/sandbox/clock",
                                     f"The sandbox clock is now {now:%Y-%m-%d %H:%M:%S} UTC.")

    async def run(self, request: web.Request, user: str) -> web.StreamResponse:
        form = await self.console.form(request)
        try:
            span = inputs.parse(inputs.RunInput, _given(form, RUN_LABELS, "run_"), strict=False).span()
            if not span:
                raise ValidationError("give how long to run: minutes or hours", "minutes")
            before = counters(self.sb.engine.stats)
            start = await self.sb.run_engine(span, lock=self.console.lock, gone=lambda: client_gone(request))
        except Exception as exc:
            p = problem(exc)
            if p.field in ("minutes", "hours"):
                p = Problem(p.status, "run_" + p.field, p.message)
            return self._clock_page(request, user, status=p.status, problem_=p, values=form)
        after = counters(self.sb.engine.stats)
        delta = {key: after[key] - before[key] for key, _label in COUNTERS}
        delta["skipped_by"] = {k: n - before["skipped_by"].get(k, 0) for k, n in after["skipped_by"].items()
                               if n != before["skipped_by"].get(k, 0)}
        delta["errors_by"] = {k: n - before["errors_by"].get(k, 0) for k, n in after["errors_by"].items()
                              if n != before["errors_by"].get(k, 0)}
        return self._clock_page(request, user, run={"start": start, "end": self.sb.clock.now(), **delta})

    # -- fault rules ------------------------------------------------------------------------------------
    def _faults_page(self, request: web.Request, user: str, *, status: int = 200, problem_: Problem | None = None,
                     values: dict[str, Any] | None = None) -> web.Response:
        self.sb.world.refresh()  # rules another process changed
        rules = [{**rule.to_json(), "description": describe(rule)} for rule in self.sb.faults.rules]
        return self.console.render(
            request, "sandbox_faults.html", status=status, user=user, problem=problem_, rules=rules,
            values=values if values is not None else {"operation": "*", "probability": "1"},
            FAULT_LABELS=FAULT_LABELS, labels=FAULT_LABELS)

    def _hidden(self, request: web.Request, user: str) -> web.Response | None:
        """The refusal of the fault rules while a training session without hints is open: they name
        the planted fault (``sss fault list`` refuses likewise)."""
        from simulator.console.training_pages import hidden_session

        session = hidden_session(self.sb)
        if session is None:
            return None
        return self.console.render(
            request, "message.html", status=403, user=user, title="Fault rules",
            text=f"The fault rules are the trainer's while a training session without hints ({session.scenario}) "
                 "is open: check your fix on the Training session page (Give up shows the answer).")

    async def faults(self, request: web.Request, user: str) -> web.StreamResponse:
        if (refused := self._hidden(request, user)) is not None:
            return refused
        return self._faults_page(request, user)

    async def add_fault(self, request: web.Request, user: str) -> web.StreamResponse:
        if (refused := self._hidden(request, user)) is not None:
            return refused
        form = await self.console.form(request)
        try:
            rule = inputs.fault_rule(_given(form, FAULT_LABELS), strict=False)
            await self.console.locked(lambda: self.sb.add_rule(rule))
        except Exception as exc:
            p = problem(exc)
            return self._faults_page(request, user, status=p.status, problem_=p, values=form)
        return self.console.redirect(f"{PREFIX}/sandbox/faults", f"Fault rule added: {describe(rule)}.")

    async def clear_faults(self, request: web.Request, user: str) -> web.StreamResponse:
        if (refused := self._hidden(request, user)) is not None:
            return refused
        await self.console.locked(self.sb.clear_faults)
        return self.console.redirect(f"{PREFIX}/sandbox/faults", "Fault rules removed.")

    def routes(self) -> list[web.RouteDef]:
        p, trainer = PREFIX + "/sandbox", self.trainer
        return [
            web.get(p, trainer(self._to_clock)),
            web.get(p + "/clock", trainer(self.clock)),
            web.post(p + "/clock", trainer(self.advance)),
            web.post(p + "/run", trainer(self.run)),
            web.get(p + "/faults", trainer(self.faults)),
            web.post(p + "/faults", trainer(self.add_fault)),
            web.post(p + "/faults/clear", trainer(self.clear_faults)),
        ]

    async def _to_clock(self, _request: web.Request, _user: str) -> web.StreamResponse:
        return web.HTTPSeeOther(f"{PREFIX}/sandbox/clock")
