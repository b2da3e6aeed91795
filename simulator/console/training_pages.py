"""The console's "Training" page: the open training session, and "Check my fix".

A trainee works on a scenario built with ``sss walkthrough --scenario NAME [--no-hints]`` (or
``sss console --scenario NAME``) in the product's pages. This page shows what the trainee is told:
the scenario's story and, when the session gives hints, where to start; then "Check my fix" asks
:func:`simulator.training.check` - the same judgement as ``sss training check`` - and shows what
does not hold yet, or, once fixed (or on "Give up"), what was wrong, where it showed and what
fixes it. Any signed-in user may use it: it is the trainee's.

While a session without hints is open, the trainer's fault rules page refuses (as ``sss fault
list`` does), since the rules name the fault.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from simulator import training
from simulator.console import PREFIX, problem
from simulator.scenarios import SCENARIOS

if TYPE_CHECKING:
    from simulator.console import Console

SECTION = "Training"


def database_of(sandbox) -> str:
    """The sandbox's database as the training functions take it (a SQLAlchemy URL)."""
    return sandbox.db.url.render_as_string(hide_password=False)


def hidden_session(sandbox) -> training.Training | None:
    """The open training session without hints on the sandbox's database, if any."""
    try:
        return training.hidden_session(database_of(sandbox))
    except Exception:  # an unreadable record hides nothing; the Training page reports it
        return None


class TrainingPages:
    nav = ((SECTION, "/training", "Training session"),)

    def __init__(self, console: Console) -> None:
        self.console = console
        self.db = database_of(console.sb)

    def _page(self, request: web.Request, user: str, *, status: int = 200, verdict=None, problem_=None):
        try:
            session = training.session(self.db)
        except Exception as exc:
            session, problem_, status = None, problem(exc), 500
        scenario = SCENARIOS.get(session.scenario) if session else None
        return self.console.render(request, "training.html", status=status, user=user, session=session,
                                   scenario=scenario, verdict=verdict, problem=problem_)

    async def show(self, request: web.Request, user: str) -> web.StreamResponse:
        return self._page(request, user)

    async def check(self, request: web.Request, user: str) -> web.StreamResponse:
        give_up = (await self.console.form(request)).get("give_up") == "true"
        try:
            verdict = await self.console.locked(lambda: training.check(self.db, give_up=give_up))
        except Exception as exc:
            p = problem(exc)
            return self._page(request, user, status=p.status, problem_=p)
        return self._page(request, user, verdict=verdict)

    def routes(self) -> list[web.RouteDef]:
        page = self.console.page
        return [web.get(PREFIX + "/training", page(self.show)), web.post(PREFIX + "/training", page(self.check))]
