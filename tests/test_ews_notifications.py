"""Streaming and push notifications over EWS, driven by the unmodified exchangelib client over HTTPS:
a streaming subscription delivers each event once (the position is the server's, kept as a store
event), a streaming connection ends after ConnectionTimeout minutes of sandbox time (or as many
minutes of real time when the sandbox clock stands still), other requests are served while it is
open, and subscription ids that are unknown, ended or of the wrong kind are refused with Exchange's
response codes."""

from __future__ import annotations

import threading
import time

import pytest
from exchangelib import Message
from exchangelib.errors import (
    ErrorInvalidPullSubscriptionId,
    ErrorInvalidPushSubscriptionUrl,
    ErrorInvalidSubscription,
    ErrorSubscriptionNotFound,
)
from exchangelib.properties import CreatedEvent, DeletedEvent, ModifiedEvent, NewMailEvent
from exchangelib.services import GetStreamingEvents
from test_ews import ALICE, Server, account, trust

from simulator.exchange.ews import notifications
from simulator.exchange.store import ExchangeStore


def _events(notifications_):
    return [(type(e), e.item_id.id) for n in notifications_ for e in n.events]


def test_a_streaming_subscription_delivers_each_event_once(acc, server):
    with acc.inbox.streaming_subscription() as subscription_id:
        assert acc.affinity_cookie  # asked for server affinity: the backend cookie came back
        item_id = server.deliver("News")
        first = list(acc.inbox.get_streaming_events(subscription_id, connection_timeout=1,
                                                    max_notifications_returned=1))
        assert _events(first) == [(CreatedEvent, item_id), (NewMailEvent, item_id)]
        assert all(e.watermark is None for n in first for e in n.events)  # streaming has no watermarks
        item = acc.inbox.get(id=item_id)
        item.is_read = True
        item.save(update_fields=["is_read"])
        item.delete()
        # what was written to the first connection is not sent again
        second = list(acc.inbox.get_streaming_events(subscription_id, connection_timeout=1,
                                                     max_notifications_returned=1))
        assert _events(second) == [(ModifiedEvent, item_id), (DeletedEvent, item_id)]
    # the position is kept by the store, as events its journal replays
    positions = [e for e in server.journal if e["k"] == "subpos" and e["s"] == subscription_id]
    assert len(positions) == 3  # where it started, then after each connection's events
    replayed = ExchangeStore(server.clock)
    for address, mbx in server.store.mailboxes.items():
        replayed.apply({"k": "mbx", "a": address, "n": mbx.display_name,
                        "f": [[fid, name] for name, fid in mbx.distinguished.items()]})
    for event in server.journal:
        if event["k"] in ("subpos", "unsub"):
            replayed.apply(event)
    assert subscription_id in replayed.mailbox(ALICE).settings.ended_subscriptions
    assert replayed.mailbox(ALICE).settings.delivered == server.store.mailbox(ALICE).settings.delivered == {}


def test_only_the_event_types_asked_for_are_streamed(acc, server):
    with acc.inbox.streaming_subscription(event_types=["DeletedEvent"]) as subscription_id:
        item_id = server.deliver("Short-lived")
        acc.inbox.get(id=item_id).delete()
        got = list(acc.inbox.get_streaming_events(subscription_id, connection_timeout=1,
                                                  max_notifications_returned=1))
        assert _events(got) == [(DeletedEvent, item_id)]


def test_a_quiet_connection_ends_after_its_timeout_in_sandbox_time(acc, server):
    with acc.drafts.streaming_subscription() as subscription_id:
        service = GetStreamingEvents(account=acc)
        threading.Timer(1.0, lambda: server.run(server.clock.advance, 61)).start()
        started = time.monotonic()
        got = list(service.call(subscription_ids=[subscription_id], connection_timeout=1))
        assert got == [] and service.connection_status == service.CLOSED
        assert time.monotonic() - started < 15  # not the minute of real time a real server would take


def test_a_connection_ends_in_real_time_when_the_sandbox_clock_stands_still(acc, server, monkeypatch):
    monkeypatch.setattr(notifications, "REAL_SECONDS_PER_MINUTE", 1.5)
    with acc.drafts.streaming_subscription() as subscription_id:
        service = GetStreamingEvents(account=acc)
        started = time.monotonic()
        got = list(service.call(subscription_ids=[subscription_id], connection_timeout=2))
        assert got == [] and service.connection_status == service.CLOSED
        assert 2.5 < time.monotonic() - started < 15


def test_an_event_made_while_the_connection_is_open_arrives_on_it(acc, server):
    acc.protocol._session_pool_maxsize += 1
    acc.protocol.increase_poolsize()  # one session streams, the other saves the message
    with acc.drafts.streaming_subscription() as subscription_id:
        made: list[str] = []

        def save_later():
            time.sleep(1.0)
            made.append(Message(account=acc, folder=acc.drafts, subject="While open").save().id)

        saver = threading.Thread(target=save_later)
        saver.start()
        got = list(acc.drafts.get_streaming_events(subscription_id, connection_timeout=1,
                                                   max_notifications_returned=1))
        saver.join()
        assert _events(got) == [(CreatedEvent, made[0])]


def test_bad_subscription_ids_are_refused_as_exchange_does(acc, server):
    with pytest.raises(ErrorInvalidSubscription) as caught:
        list(acc.inbox.get_streaming_events("AAA-", connection_timeout=1))
    assert caught.value.value == "Subscription is invalid. (subscription IDs: ['AAA-'])"
    # a pull subscription does not stream
    with acc.inbox.pull_subscription() as (pull_id, watermark), pytest.raises(ErrorInvalidSubscription):
        list(acc.inbox.get_streaming_events(pull_id, connection_timeout=1))
    # nor is a streaming one pulled
    with acc.inbox.streaming_subscription() as streaming_id, pytest.raises(ErrorInvalidPullSubscriptionId):
        list(acc.inbox.get_events(streaming_id, watermark))
    with pytest.raises(ErrorSubscriptionNotFound):  # ended by the context manager
        list(acc.inbox.get_streaming_events(streaming_id, connection_timeout=1))
    with pytest.raises(ErrorSubscriptionNotFound):
        acc.inbox.unsubscribe(streaming_id)


def test_a_push_subscription_is_answered_and_cannot_be_unsubscribed(acc, server):
    subscription_id, watermark = acc.inbox.subscribe_to_push("https://crm.contoso.example/notify")
    assert subscription_id and watermark
    with pytest.raises(ErrorInvalidSubscription):  # it ends by answering a notification with Unsubscribe
        acc.inbox.unsubscribe(subscription_id)
    with pytest.raises(ErrorInvalidPushSubscriptionUrl):
        acc.inbox.subscribe_to_push("ftp://crm.contoso.example/notify")


def test_an_open_connection_ends_with_the_server(tmp_path, monkeypatch):
    server = Server(tmp_path)
    trust(monkeypatch, server)
    acc = account(server)
    subscription_id = acc.inbox.subscribe_to_streaming()
    service = GetStreamingEvents(account=acc)
    outcome: list = []
    client = threading.Thread(target=lambda: outcome.append(
        list(service.call(subscription_ids=[subscription_id], connection_timeout=30))))
    client.start()
    time.sleep(1.0)
    started = time.monotonic()
    server.stop()  # does not wait for the 30 minutes the connection asked for
    client.join(10)
    assert time.monotonic() - started < 10
    assert outcome == [[]] and service.connection_status == service.CLOSED
