"""The administrator's setup flow over the ``/_sim`` control plane (HTTPS, a real HTTP client).

Each test starts a wire-mode sandbox with an organization and S2S configured, then does the
rest of SPEC section 1 the way a test suite in another language would: JSON over HTTPS, the
acting user in the ``X-SSS-User`` header.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from simulator.crm.admin import PRV_APPROVE, PRV_READ_MAILBOX
from simulator.crm.models import AsyncOperation, Email, EmailServerProfile, Mailbox, Organization, TraceLog
from simulator.exchange.mime import MessageData
from simulator.wire import WireSandbox

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
SUPPORT = "support@contoso.example"
CARL = "carl@fabrikam.example"
GHOST = "ghost@contoso.example"


async def _started(tmp_path) -> WireSandbox:
    """Organization, users, a queue, a contact and the S2S steps; no profile yet."""
    wire = WireSandbox(seed=5, state_dir=tmp_path)
    admin = wire.sb.admin
    admin.create_organization("Contoso", admin_domain="admin")
    admin.add_user("Alice", ALICE, track=0)
    admin.add_user("Bob", BOB, track=1)
    admin.add_queue("Support", SUPPORT, owner="admin")
    admin.add_record("contact", "Carl", CARL)
    wire.configure_s2s(as_user="admin")
    await wire.start()
    return wire


class Api:
    """A small JSON client of the control plane."""

    def __init__(self, wire: WireSandbox, session: aiohttp.ClientSession) -> None:
        self.base = wire.base_url
        self.http = session
        self.key = wire.control_key

    async def __call__(self, method: str, path: str, body: Any = None, *, user: str | None = "admin",
                       raw: bytes | None = None) -> tuple[int, Any, Any]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        if user is not None:
            headers["X-SSS-User"] = user
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.base + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json(), resp.headers


async def _with_api(tmp_path, scenario) -> None:
    wire = await _started(tmp_path)
    ctx = ssl.create_default_context(cafile=str(wire.tls.ca_file))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            await scenario(wire, Api(wire, session))
    finally:
        await wire.stop()


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _state(wire: WireSandbox) -> list:
    """Every row an admin operation can write, to show that a refused request wrote nothing."""
    with wire.sb.db.connect() as conn:
        return [sorted(tuple(r) for r in conn.execute(select(model.__table__)).all())
                for model in (Organization, EmailServerProfile, Mailbox, AsyncOperation, TraceLog)]


async def _profile_and_defaults(api: Api, wire: WireSandbox) -> None:
    status, _, _ = await api("POST", "/_sim/profiles", {
        "name": "EXO", "processemailsreceivedafter": _iso(wire.clock.now() - timedelta(days=1))})
    assert status == 201
    status, _, _ = await api("PATCH", "/_sim/settings", {"defaultemailserverprofileid": "EXO"})
    assert status == 200


def test_the_setup_flow_over_http_ends_with_a_mailbox_that_tracks_mail(tmp_path):
    async def scenario(wire: WireSandbox, api: Api) -> None:
        status, check, _ = await api("GET", "/_sim/org/check", user=None)
        assert status == 200 and check["ok"] is True

        # 1.5 the profile: tenant id from the organization, owner pre-filled with the creator
        after = wire.clock.now() - timedelta(days=1)
        status, profile, headers = await api("POST", "/_sim/profiles", {
            "name": "EXO", "description": "Exchange Online", "processemailsreceivedafter": _iso(after),
            "moveundeliveredemails": True})
        assert status == 201, profile
        pid = profile["emailserverprofileid"]
        assert headers["Location"] == f"/_sim/profiles/{pid}"
        assert profile["exchangeonlinetenantid"] == wire.s2s.tenant_id
        assert profile["owner"] == "admin" and profile["servertype"] == 3
        assert datetime.fromisoformat(profile["processemailsreceivedafter"]) == after

        status, test, _ = await api("POST", "/_sim/profiles/EXO/test")
        assert status == 200 and test["ok"] is True, test
        assert test["lasttestexecutionstatus"] == 1 and all(c["ok"] for c in test["checks"])
        assert all(c["request"] and c["response"] for c in test["checks"])

        status, profile, _ = await api("PATCH", f"/_sim/profiles/{pid}", {"maxconcurrentconnections": 20})
        assert status == 200 and profile["maxconcurrentconnections"] == 20
        assert profile["lasttestexecutionstatus"] == 1

        # 1.6 the organization's defaults
        status, settings, _ = await api("PATCH", "/_sim/settings", {
            "defaultemailserverprofileid": "EXO", "incomingemaildeliverymethod": "sss",
            "outgoingemaildeliverymethod": 2, "actdeliverymethod": "sss"})
        assert status == 200 and settings["defaultemailserverprofile"] == "EXO"
        assert (await api("GET", "/_sim/settings", user=None))[1] == settings

        # 1.8 then 1.7 with its Test & Enable
        status, body, _ = await api("POST", "/_sim/mailboxes/approve", {"mailboxes": [ALICE, BOB]})
        assert status == 200 and [m["emailrouteraccessapproval"] for m in body["mailboxes"]] == [1, 1]
        status, body, _ = await api("POST", "/_sim/mailboxes/apply-defaults", {"mailboxes": [ALICE]})
        assert status == 200, body
        [result] = body["results"]
        assert result["emailaddress"] == ALICE and result["ok"] is True, result
        assert (result["incoming"], result["outgoing"]) == ("SUCCESS", "SUCCESS")

        # 1.7 without the test, then 1.9 with a start date
        status, body, _ = await api("POST", "/_sim/mailboxes/apply-defaults",
                                    {"mailboxes": [BOB], "test_and_enable": False})
        assert status == 200 and body["results"] == []
        assert body["mailboxes"][0]["emailserverprofile"] == pid
        status, body, _ = await api("POST", "/_sim/mailboxes/test-enable", {
            "mailboxes": [BOB], "start_date": _iso(wire.clock.now() - timedelta(hours=2)),
            "this_org_only": True})
        assert status == 200 and body["results"][0]["ok"] is True, body

        # edit several mailboxes at once
        status, body, _ = await api("PATCH", "/_sim/mailboxes", {
            "mailboxes": [SUPPORT], "emailserverprofile": "EXO", "actdeliverymethod": "none"})
        assert status == 200 and body["mailboxes"][0]["emailserverprofile"] == pid

        status, alice, _ = await api("GET", f"/_sim/mailboxes/{ALICE}", user=None)
        assert status == 200 and alice["enabledforincomingemail"] is True
        assert alice["emailserverprofilename"] == "EXO" and alice["incomingemailstatus"] == 1

        # mail arrives, virtual time moves, the engine tracks it
        wire.sb.deliver(MessageData(subject="Order 12", sender=CARL, to=(ALICE,),
                                    message_id="order-12@fabrikam.example", body="Please ship."))
        status, body, _ = await api("POST", "/_sim/clock/advance", {"seconds": 900}, user=None)
        assert status == 200 and body["polls"] > 0
        with wire.sb.db.connect() as conn:
            tracked = conn.execute(select(Email.subject, Email.statuscode, Email.receivingmailboxid)).all()
        assert [tuple(t) for t in tracked] == [("Order 12", 4, alice["mailboxid"])]
        status, stats, _ = await api("GET", "/_sim/stats", user=None)
        assert stats["emails_tracked"] == 1

        # the success of Test & Enable is an information alert about the mailbox
        status, alerts, _ = await api("GET", f"/_sim/alerts?mailbox={ALICE}&level=1", user=None)
        assert status == 200 and alerts and all(a["regarding"] == ALICE and a["level"] == 1 for a in alerts)

        # a new address starts approval over
        status, moved, _ = await api("PATCH", f"/_sim/mailboxes/{BOB}", {"emailaddress": "robert@contoso.example"})
        assert status == 200 and moved["emailaddress"] == "robert@contoso.example"
        assert moved["emailrouteraccessapproval"] == 2 and moved["enabledforincomingemail"] is False

    asyncio.run(_with_api(tmp_path, scenario))


def test_refused_requests_name_the_field_and_write_nothing(tmp_path):
    async def scenario(wire: WireSandbox, api: Api) -> None:
        admin = wire.sb.admin
        admin.create_role("admin", "Approver", [PRV_APPROVE, PRV_READ_MAILBOX])
        admin.add_user("Pat", "pat@contoso.example", roles=["Approver"])
        before = _state(wire)

        async def refused(method: str, path: str, body: Any = None, *, status: int, field: str | None,
                          user: str | None = "admin", raw: bytes | None = None, says: str = "") -> None:
            got, answer, _ = await api(method, path, body, user=user, raw=raw)
            assert (got, answer.get("field")) == (status, field), (method, path, body, answer)
            assert set(answer) == {"error", "field"}
            assert answer["error"].startswith(f"{field}: " if field else "")
            assert says.lower() in answer["error"].lower(), answer
            assert _state(wire) == before, f"{method} {path} {body} wrote something"

        good = {"name": "EXO"}
        # who acts
        await refused("POST", "/_sim/profiles", good, user=None, status=403, field="X-SSS-User")
        await refused("POST", "/_sim/profiles", good, user="  ", status=403, field="X-SSS-User")
        await refused("POST", "/_sim/profiles", good, user="nobody", status=403, field="X-SSS-User", says="nobody")
        await refused("POST", "/_sim/profiles", good, user="pat", status=403, field="X-SSS-User",
                      says="prvConfigureEmailServerSideSync")
        await refused("PATCH", "/_sim/mailboxes", {"mailboxes": [ALICE], "actdeliverymethod": 1}, user="pat",
                      status=403, field="X-SSS-User", says="prvWriteMailbox")
        await refused("POST", "/_sim/profiles/EXO/test-enable", user="pat", status=404, field="profile")
        # the body
        await refused("POST", "/_sim/profiles", raw=b"{not json", status=400, field="body")
        await refused("POST", "/_sim/profiles", ["EXO"], status=400, field="body", says="object")
        await refused("POST", "/_sim/profiles", raw=b"", status=400, field="name", says="required")
        await refused("POST", "/_sim/profiles", {"name": "EXO", "colour": "red"}, status=400, field="colour")
        await refused("POST", "/_sim/profiles", {"description": "no name"}, status=400, field="name")
        await refused("POST", "/_sim/profiles", {"name": "EXO", "maxconcurrentconnections": 500},
                      status=400, field="maxconcurrentconnections", says="1 to 300")
        await refused("POST", "/_sim/profiles", {"name": "EXO", "maxconcurrentconnections": "10"},
                      status=400, field="maxconcurrentconnections", says="whole number")
        await refused("POST", "/_sim/profiles", {"name": "EXO", "useautodiscover": "yes"},
                      status=400, field="useautodiscover")
        await refused("POST", "/_sim/profiles", {"name": "EXO", "processemailsreceivedafter": "31/12/2024"},
                      status=400, field="processemailsreceivedafter", says="is not a date and time")
        await refused("POST", "/_sim/profiles", {"name": "EXO", "ownerid": "nobody"}, status=400, field="ownerid")
        await refused("PATCH", "/_sim/settings", {"s2stenantid": "x"}, status=400, field="s2stenantid")
        await refused("PATCH", "/_sim/settings", {}, status=400, field="body")
        await refused("PATCH", "/_sim/settings", {"defaultemailserverprofileid": "EXO"}, status=400,
                      field="defaultemailserverprofileid")
        # approval: one unknown address refuses the whole list
        await refused("POST", "/_sim/mailboxes/approve", {"mailboxes": [ALICE, GHOST]}, status=400,
                      field="mailboxes", says=GHOST)
        await refused("POST", "/_sim/mailboxes/approve", {"mailboxes": []}, status=400, field="mailboxes")
        await refused("POST", "/_sim/mailboxes/approve", {"mailboxes": ALICE}, status=400, field="mailboxes")
        # steps out of order: no default profile yet, no profile on the mailbox
        await refused("POST", "/_sim/mailboxes/apply-defaults", {"mailboxes": [ALICE]}, status=409,
                      field="defaultemailserverprofileid")
        await refused("POST", "/_sim/mailboxes/test-enable", {"mailboxes": [ALICE]}, status=409,
                      field=None, says="do step 1.7")
        # what the path names
        await refused("GET", f"/_sim/mailboxes/{GHOST}", status=404, field="mailbox")
        await refused("PATCH", f"/_sim/mailboxes/{GHOST}", {"emailaddress": "x@contoso.example"}, status=404,
                      field="mailbox")
        await refused("PATCH", f"/_sim/mailboxes/{ALICE}", {"emailaddress": BOB}, status=409,
                      field="emailaddress", says="already")
        await refused("GET", "/_sim/profiles/Nope", status=404, field="profile")
        await refused("GET", "/_sim/jobs/no-such-job", status=404, field="job")
        # alert filters
        await refused("GET", "/_sim/alerts?level=9", status=400, field="level")
        await refused("GET", "/_sim/alerts?user=ghost", status=400, field="user")
        await refused("GET", "/_sim/alerts?colour=red", status=400, field="colour")
        await refused("GET", f"/_sim/alerts?mailbox={GHOST}", status=400, field="mailbox")

        # a profile is made once; the second one with its name is refused
        status, _, _ = await api("POST", "/_sim/profiles", good)
        assert status == 201
        before = _state(wire)
        await refused("POST", "/_sim/profiles", good, status=409, field="name", says="already exists")
        await refused("POST", "/_sim/mailboxes/test-enable", {"mailboxes": [ALICE], "start_date": "tomorrow"},
                      status=400, field="start_date")
        await refused("POST", "/_sim/mailboxes/test-enable",
                      {"mailboxes": [ALICE], "start_date": "0001-01-01T00:00:00+05:00"},
                      status=400, field="start_date")
        await refused("POST", "/_sim/mailboxes/test-enable", {"mailboxes": [ALICE], "this_org_only": 1},
                      status=400, field="this_org_only")
        # the approver may approve, and nothing more
        status, body, _ = await api("POST", "/_sim/mailboxes/approve", {"mailboxes": [ALICE]}, user="pat")
        assert status == 200 and body["mailboxes"][0]["emailrouteraccessapproval"] == 1

    asyncio.run(_with_api(tmp_path, scenario))


def test_test_and_enable_of_a_profile_runs_as_a_background_job_and_shows_its_progress(tmp_path):
    async def scenario(wire: WireSandbox, api: Api) -> None:
        await _profile_and_defaults(api, wire)
        addresses = [m.emailaddress for m in wire.sb.admin.mailboxes()]
        for path in ("/_sim/mailboxes/approve", "/_sim/mailboxes/apply-defaults"):
            status, _, _ = await api("POST", path, {"mailboxes": addresses, "test_and_enable": False}
                                     if path.endswith("defaults") else {"mailboxes": addresses})
            assert status == 200

        # hold the job before its second mailbox, to look at it half done
        admin = wire.sb.admin
        first_done, go_on = asyncio.Event(), asyncio.Event()
        test_batch = admin._test_batch  # a small profile's job tests one mailbox at a time
        calls = []

        async def held(*args, **kw):
            calls.append(args)
            if len(calls) == 2:
                first_done.set()
                await go_on.wait()
            return await test_batch(*args, **kw)

        admin._test_batch = held
        status, job, headers = await api("POST", "/_sim/profiles/EXO/test-enable")
        assert status == 202, job
        location = headers["Location"]
        assert location == f"/_sim/jobs/{job['asyncoperationid']}" and job["state"] == "waiting"

        await asyncio.wait_for(first_done.wait(), 30)
        status, half, _ = await api("GET", location, user=None)
        assert status == 200 and half["state"] == "in progress", half
        assert half["result"]["done"] == 1 and half["result"]["total"] == len(addresses)
        assert 0 < half["progress"] < 100
        # virtual time waits for the job: the clock advance is held until it ends
        advance = asyncio.ensure_future(api("POST", "/_sim/clock/advance", {"seconds": 60}, user=None))
        await asyncio.sleep(0.3)
        assert not advance.done()

        go_on.set()
        for _ in range(300):
            status, job, _ = await api("GET", location, user=None)
            if job["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "succeeded" and job["progress"] == 100, job
        entries = job["result"]["mailboxes"]
        assert sorted(e["emailaddress"] for e in entries) == sorted(addresses)
        assert all(e["ok"] and e["incoming"] == "SUCCESS" for e in entries), entries
        assert job["startedon"] and job["completedon"]
        assert (await advance)[0] == 200

        status, jobs, _ = await api("GET", "/_sim/jobs", user=None)
        assert [j["asyncoperationid"] for j in jobs] == [job["asyncoperationid"]]
        status, boxes, _ = await api("GET", "/_sim/mailboxes", user=None)
        assert all(b["enabledforincomingemail"] for b in boxes)

    asyncio.run(_with_api(tmp_path, scenario))


# -- a long clock advance ----------------------------------------------------------------------------------
def test_a_long_clock_advance_lets_other_requests_in_and_stops_when_its_client_goes(tmp_path):
    """The advance runs in one-hour slices; here each slice is made to cost 20 ms of real time."""
    async def scenario(wire: WireSandbox, api: Api) -> None:
        real_run_until = wire.sb.run_until

        async def slow_slice(end, progress=None):
            await asyncio.sleep(0.02)
            await real_run_until(end, progress)

        wire.sb.run_until = slow_slice
        start = wire.clock.now()
        # a client that gives up after 1 s on a year's advance (8,784 slices: ~3 minutes)
        ctx = ssl.create_default_context(cafile=str(wire.tls.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as impatient:
            with pytest.raises(asyncio.TimeoutError):
                await impatient.post(f"{wire.base_url}/_sim/clock/advance", json={"seconds": 366 * 86400},
                                     headers={"Authorization": f"Bearer {wire.control_key}"},
                                     timeout=aiohttp.ClientTimeout(total=1))
        # meanwhile and after, the sandbox answers at once, and the advance has stopped
        status, body, _ = await api("POST", "/_sim/org/prerequisites", {"ifd": True, "hybrid_connector": True})
        assert status == 200, body
        await asyncio.sleep(0.3)
        status, first, _ = await api("GET", "/_sim/clock")
        await asyncio.sleep(0.3)
        status, second, _ = await api("GET", "/_sim/clock")
        assert first["now"] == second["now"], "the advance went on after its client left"
        reached = datetime.fromisoformat(second["now"])
        assert start < reached < start + timedelta(days=30)

        # a short advance finishes and answers with the time reached
        status, body, _ = await api("POST", "/_sim/clock/advance", {"seconds": 3 * 3600})
        assert status == 200 and datetime.fromisoformat(body["now"]) == reached + timedelta(hours=3)

    asyncio.run(_with_api(tmp_path, scenario))
