"""Property-based tests (hypothesis) of the security edge: webhook forms and stream credentials.

Whatever a client sends, the form parser returns bounded fields or refuses with 400, and a credential either
verifies to the very call it was issued for or is refused; nothing else, never an unexpected exception.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.twilio.security import CredentialRejected, StreamCredentials
from gateway.twilio.webhook import MAX_FIELD_CHARS, MAX_FORM_FIELDS, WebhookRejected, parse_webhook_form

CREDENTIALS = StreamCredentials(b"s" * 32, 600)
call_sids = st.text("0123456789abcdef", min_size=32, max_size=32).map(lambda h: "CA" + h)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_any_body_is_a_bounded_form_or_a_400(body: bytes) -> None:
    try:
        form = parse_webhook_form(body)
    except WebhookRejected as rejected:
        assert rejected.status == 400
        return
    assert len(form) <= MAX_FORM_FIELDS
    assert all(len(k) <= MAX_FIELD_CHARS and len(v) <= MAX_FIELD_CHARS for k, v in form.items())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=40), st.text(max_size=200), max_size=30))
def test_twilio_shaped_forms_round_trip(fields: dict[str, str]) -> None:
    assert parse_webhook_form(urlencode(fields).encode()) == fields


def test_too_many_or_too_long_fields_are_refused() -> None:
    for body in (urlencode({f"f{n}": "x" for n in range(MAX_FORM_FIELDS + 1)}), urlencode({"a": "x" * (MAX_FIELD_CHARS + 1)})):
        try:
            parse_webhook_form(body.encode())
        except WebhookRejected as rejected:
            assert rejected.status == 400
        else:
            raise AssertionError("accepted")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_refused_as_a_credential(text: str) -> None:
    try:
        CREDENTIALS.verify(text)
    except CredentialRejected:
        return
    raise AssertionError(f"forged text verified: {text!r}")


@settings(max_examples=300, deadline=None)
@given(call_sids, st.sampled_from(["i", "o"]), st.integers(0, 200), st.characters(codec="ascii"))
def test_a_credential_verifies_only_unchanged(call_sid: str, kind: str, position: int, replacement: str) -> None:
    credential = CREDENTIALS.issue(call_sid, kind)
    grant = CREDENTIALS.verify(credential)
    assert (grant.call_sid, grant.kind) == (call_sid, kind)
    position %= len(credential)
    tampered = credential[:position] + replacement + credential[position + 1:]
    if tampered == credential:
        return
    try:
        forged = CREDENTIALS.verify(tampered)
    except CredentialRejected:
        return
    # Only a change the MAC does not cover could pass, and nothing outside it exists: never the same call, kind
    # and nonce with another expiry, nor another call.
    raise AssertionError(f"tampered credential verified: {tampered!r} -> {forged}")


def test_nonces_are_unique() -> None:
    sid = "CA" + secrets.token_hex(16)
    assert len({CREDENTIALS.verify(CREDENTIALS.issue(sid)).nonce for _ in range(1000)}) == 1000
