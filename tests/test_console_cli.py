"""`sss console --db FILE`: the web console over a sandbox made with the CLI, as a real process.

A trainee's database (a training scenario), the console started on it, the fix done in the pages
over HTTP, the process stopped with SIGTERM: what the pages did is in the database for the next
`sss` command.
"""

from __future__ import annotations

import json
import re
import signal

import pytest
import requests
from test_processes import SSS, TIMEOUT, _env, _Process, _sss, _wait_until

pytestmark = pytest.mark.skipif(SSS is None, reason="the sss entry point is not installed next to this Python")
BOB = "bob@contoso.example"
URL = re.compile(r"Web console\s+(http://127\.0\.0\.1:\d+)/console/\?key=(\S+)")


def test_the_console_fixes_a_scenario_and_the_fix_outlives_the_process(tmp_path):
    env = _env(tmp_path / "home")
    db = str(tmp_path / "training.db")
    built = _sss(["walkthrough", "--scenario", "unapproved-mailbox", "--db", db], env=env, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr

    console = _Process([SSS, "console", "--db", db], env=env, cwd=tmp_path, name="console")
    try:
        _wait_until(lambda: URL.search(console.stdout), "the console's address", proc=console)
        base, key = URL.search(console.stdout).groups()
        http = requests.Session()
        http.trust_env = False
        assert http.get(f"{base}/console/mailboxes", timeout=TIMEOUT).status_code == 401  # no key yet
        assert http.get(f"{base}/console/?key={key}", timeout=TIMEOUT).url.endswith("/console/signin")
        home = http.post(f"{base}/console/signin", data={"user": "admin"}, timeout=TIMEOUT)
        assert home.status_code == 200 and "Email Configuration" in home.text

        page = http.get(f"{base}/console/mailboxes", params={"q": "bob"}, timeout=TIMEOUT).text
        [bob_id] = re.findall(r'name="mailboxes" value="([^"]+)"', page)
        assert "Pending Approval" in page
        approved = http.post(f"{base}/console/mailboxes/approve", data={"mailboxes": bob_id}, timeout=TIMEOUT)
        assert approved.status_code == 200 and "approved for 1 mailbox" in approved.text
        tested = http.post(f"{base}/console/mailboxes/test-enable", data={"mailboxes": bob_id}, timeout=TIMEOUT)
        assert tested.status_code == 200, tested.text[:500]
        assert re.search(r'<tr class="ok" data-address="bob@contoso.example">', tested.text), tested.text[:2000]

        console.proc.send_signal(signal.SIGTERM)
        assert console.wait() == 0, console.stderr
        assert "Stopped" in console.stdout
    finally:
        console.stop()

    listed = _sss(["mailbox", "list", "--json", "--db", db], env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    bob = next(m for m in json.loads(listed.stdout) if m["emailaddress"] == BOB)
    assert bob["emailrouteraccessapproval"] == 1
    assert bob["incomingemailstatus"] == 1 and bob["enabledforincomingemail"]


def test_a_database_without_an_organization_is_refused_and_not_created(tmp_path):
    env = _env(tmp_path / "home")
    db = tmp_path / "nothing-here.db"
    refused = _sss(["console", "--db", str(db)], env=env, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("Error: --db: no organization in")
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not db.exists()
