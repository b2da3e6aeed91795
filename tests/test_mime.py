"""Message parsing: properties read once at delivery; malformed input never raises."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.exchange.mime import MessageData, normalize_address, normalize_message_id, parse_message

GOOD = (
    b"From: Carl <Carl@Fabrikam.example>\r\n"
    b"To: alice@contoso.example, \"Bob\" <bob@contoso.example>\r\n"
    b"Cc: support@contoso.example\r\n"
    b"Subject: Quote CRM:0000001\r\n"
    b"Date: Mon, 05 Jan 2026 08:00:00 +0100\r\n"
    b"Message-ID: <ABC@fabrikam.example>\r\n"
    b"In-Reply-To: <orig@contoso.example>\r\n"
    b"References: <a@x> <orig@contoso.example>\r\n"
    b"\r\n"
    b"Hello there\r\n"
)


def test_well_formed_message_properties():
    d = parse_message(GOOD)
    assert d.parse_error is None
    assert d.sender == "carl@fabrikam.example"
    assert d.to == ("alice@contoso.example", "bob@contoso.example")
    assert d.cc == ("support@contoso.example",)
    assert d.subject == "Quote CRM:0000001"
    assert d.message_id == "abc@fabrikam.example"
    assert d.in_reply_to == "orig@contoso.example"
    assert d.references == ("a@x", "orig@contoso.example")
    assert d.date == datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    assert d.body.strip() == "Hello there"
    assert d.size == len(GOOD)


def test_rendered_message_parses_back():
    original = MessageData(subject="Hi", sender="carl@fabrikam.example", to=("alice@contoso.example",),
                           message_id="m1@x", in_reply_to="o@y", references=("o@y",),
                           date=datetime(2026, 1, 5, 8, 0, tzinfo=UTC), body="text")
    d = parse_message(original.render())
    assert (d.subject, d.sender, d.to, d.message_id, d.in_reply_to, d.references, d.date) == (
        "Hi", "carl@fabrikam.example", ("alice@contoso.example",), "m1@x", "o@y", ("o@y",),
        datetime(2026, 1, 5, 8, 0, tzinfo=UTC))
    assert d.body == "text"


def test_no_headers_is_a_parse_error():
    d = parse_message(b"garbage without headers\r\n")
    assert d.parse_error
    assert d.raw == b"garbage without headers\r\n"


def test_empty_input_is_a_parse_error():
    assert parse_message(b"").parse_error


def test_missing_from_is_a_parse_error():
    d = parse_message(b"To: alice@contoso.example\r\nSubject: x\r\n\r\nbody")
    assert d.parse_error and "From" in d.parse_error
    assert d.to == ("alice@contoso.example",)


def test_bad_date_is_a_parse_error():
    d = parse_message(b"From: a@b.example\r\nDate: yesterday-ish\r\nSubject: x\r\n\r\nbody")
    assert d.parse_error and "Date" in d.parse_error


def test_unknown_charset_does_not_raise():
    raw = (b"From: a@b.example\r\nContent-Type: text/plain; charset=\"x-no-such\"\r\n"
           b"Subject: x\r\n\r\n\xff\xfe body")
    d = parse_message(raw)
    assert isinstance(d.body, str)


def test_normalizers():
    assert normalize_message_id("  <ABC@Example>  ") == "abc@example"
    assert normalize_message_id("<>") is None
    assert normalize_message_id(None) is None
    assert normalize_address("Carl <CARL@fabrikam.example>") == "carl@fabrikam.example"
    assert normalize_address("no address") is None
    assert normalize_address("") is None


def test_fallback_key_depends_on_sender_date_subject_and_body():
    base = dict(sender="a@b", date=datetime(2026, 1, 5, tzinfo=UTC), subject="s", body="b")
    key = MessageData(**base).fallback_key()
    assert MessageData(**base).fallback_key() == key
    for field, value in (("sender", "c@d"), ("date", datetime(2026, 1, 6, tzinfo=UTC)), ("subject", "t"),
                         ("body", "c")):
        assert MessageData(**{**base, field: value}).fallback_key() != key


HEADER_NAMES = st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                                "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Thread-Index"])
header_line = st.builds(lambda n, v: n.encode() + b": " + v + b"\r\n", HEADER_NAMES, st.binary(max_size=60))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(raw):
    d = parse_message(raw)
    assert isinstance(d, MessageData)
    assert d.size == len(raw)
    assert d.parse_error is None or isinstance(d.parse_error, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(header_line, max_size=12), st.binary(max_size=200), st.booleans())
def test_header_soup_never_raises(lines, body, multipart):
    raw = b"".join(lines)
    if multipart:
        raw += b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n'
        raw += body + b"\r\n--zz--\r\n"
    else:
        raw += b"\r\n" + body
    d = parse_message(raw)
    assert isinstance(d.subject, str) and isinstance(d.body, str)
    assert all("@" in a for a in d.to + d.cc + d.bcc)
    if d.parse_error is None:
        assert d.sender is not None
