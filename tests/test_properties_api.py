"""Property tests of the outbound API's input handling: whatever a client sends, the answer is a call or an
ApiError (never another exception), and the toll-fraud guard cannot be talked out of a refusal."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.api.errors import ApiError, error_response
from gateway.api.requests import FIELDS, parse_call_request
from gateway.store import OutboundCallSettings
from gateway.twilio.numbers import (
    NANP_PAY_PER_CALL_EXCHANGE, PREMIUM_RATE_PREFIXES, destination_refusal, is_e164, is_prefix,
)

CLIENT_ERRORS = {400, 403, 413, 415, 422}
FROM = "+14155550100"
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

digits = st.text(alphabet="0123456789", min_size=1, max_size=8)
# E.164: + then 7 to 15 digits, no leading zero.
e164 = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
# Allow-list entries no longer than the shortest E.164 number, so a longer number matches no new entry.
short_prefix = st.from_regex(r"\+[0-9]{0,7}", fullmatch=True)
# Any text, lone surrogates included (hypothesis leaves them out of st.text() by default).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30) | st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3)

json_leaves = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 20)
               | st.floats(allow_nan=False) | any_text | e164)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(any_text | st.sampled_from(FIELDS), children,
                                                                       max_size=5),
    max_leaves=30,
)
# Objects shaped like a request, so the field checks (not just the JSON parser) see hostile values.
request_like = st.dictionaries(st.sampled_from(FIELDS), json_values | e164 | any_text, max_size=len(FIELDS))


def check_outcome(body: bytes, caller_ids: tuple[str, ...], prefixes: tuple[str, ...]) -> None:
    try:
        result = parse_call_request(body, caller_ids=caller_ids, allowed_prefixes=prefixes,
                                    voicemail_configured=True)
    except ApiError as error:
        assert error.status in CLIENT_ERRORS, (error.status, error.code)
        response = error_response(error)  # the error's own JSON must render (no lone surrogate in the message)
        assert json.loads(response.body)["error"]["code"] == error.code
        assert len(response.body) < 4000  # and never echoes a large body back
        return
    assert isinstance(result, OutboundCallSettings)
    assert is_e164(result.to) and result.from_ in caller_ids
    assert destination_refusal(result.to, prefixes) is None
    assert len(result.metadata) <= 32 and all(isinstance(value, str) for value in result.metadata.values())


@PROPERTY
@given(body=st.binary(max_size=300), caller_ids=st.lists(e164, max_size=2).map(tuple))
def test_arbitrary_bytes_give_a_call_or_a_client_error(body: bytes, caller_ids: tuple[str, ...]) -> None:
    check_outcome(body, caller_ids, ("+1",))


@PROPERTY
@given(value=json_values | request_like, caller_ids=st.lists(e164, max_size=2).map(tuple),
       prefixes=st.lists(short_prefix, max_size=3).map(tuple), ascii_only=st.booleans())
def test_arbitrary_json_gives_a_call_or_a_client_error(value: Any, caller_ids: tuple[str, ...],
                                                       prefixes: tuple[str, ...], ascii_only: bool) -> None:
    try:
        text = json.dumps(value, ensure_ascii=ascii_only)
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be sent raw: send it \u-escaped
        body = json.dumps(value).encode("utf-8")
    check_outcome(body, caller_ids, prefixes)


@PROPERTY
@given(to=e164, caller_ids=st.lists(e164, min_size=1, max_size=3).map(tuple))
def test_a_valid_request_with_an_allowed_caller_id_goes_through_or_is_refused_for_its_destination(
        to: str, caller_ids: tuple[str, ...]) -> None:
    body = json.dumps({"to": to, "from": caller_ids[-1]}).encode()
    try:
        result = parse_call_request(body, caller_ids=caller_ids, allowed_prefixes=("+1", "+44"),
                                    voicemail_configured=False)
    except ApiError as error:
        assert error.status == 403 and error.code.startswith("destination_")
        assert destination_refusal(to, ("+1", "+44")) is not None
    else:
        assert (result.to, result.from_) == (to, caller_ids[-1])


@PROPERTY
@given(text=any_text, prefixes=st.lists(any_text, max_size=3).map(tuple))
def test_number_checks_never_raise_on_any_text(text: str, prefixes: tuple[str, ...]) -> None:
    is_e164(text)
    is_prefix(text)
    refusal = destination_refusal(text, prefixes)
    assert refusal is None or (isinstance(refusal[0], str) and isinstance(refusal[1], str))


premium_numbers = st.one_of(
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(sorted(PREMIUM_RATE_PREFIXES)),
              st.text(alphabet="0123456789", min_size=4, max_size=10)),
    # The NANP pay-per-call exchange, in any area code: +1 NPA 976 XXXX.
    st.builds(lambda area, line: f"+1{area}{NANP_PAY_PER_CALL_EXCHANGE}{line}",
              st.from_regex(r"[2-9][0-9]{2}", fullmatch=True), st.from_regex(r"[0-9]{4}", fullmatch=True)),
)


@PROPERTY
@given(number=e164 | premium_numbers.filter(is_e164), extra=digits,
       prefixes=st.lists(short_prefix, max_size=3).map(tuple))
def test_a_refused_number_stays_refused_with_more_digits(number: str, extra: str, prefixes: tuple[str, ...]) -> None:
    refusal = destination_refusal(number, prefixes)
    if refusal is not None:
        longer = destination_refusal(number + extra, prefixes)
        assert longer is not None
        if refusal[0] == "destination_premium_rate":
            assert longer[0] == "destination_premium_rate"


@PROPERTY
@given(number=premium_numbers, prefixes=st.lists(short_prefix | st.just("+"), max_size=4).map(tuple),
       own_prefix=st.booleans())
def test_every_premium_prefix_is_refused_whatever_the_allow_list(number: str, prefixes: tuple[str, ...],
                                                                  own_prefix: bool) -> None:
    if own_prefix:
        prefixes = (*prefixes, number[:6], "+")  # even when the allow-list names the number's own prefix
    refusal = destination_refusal(number, prefixes)
    assert refusal is not None and refusal[0] == "destination_premium_rate", (number, prefixes)
    if is_e164(number):
        body = json.dumps({"to": number}).encode()
        try:
            parse_call_request(body, caller_ids=(FROM,), allowed_prefixes=prefixes, voicemail_configured=False)
        except ApiError as error:
            assert (error.status, error.code) == (403, "destination_premium_rate")
        else:
            raise AssertionError(f"{number} was accepted")
