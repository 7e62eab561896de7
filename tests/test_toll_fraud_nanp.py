"""The toll-fraud guard's high-cost North American areas (issue 17): refused with a 403 naming
OUTBOUND_ALLOWED_PREFIXES, allowed when the area code is listed, ordinary +1 numbers still placed, and
TRANSFER_NUMBER guarded the same way at start-up. End to end against the real API and the stand-in Twilio REST API.
"""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings
from gateway.twilio.numbers import NANP_HIGH_COST_AREA_CODES, destination_refusal
from tests.test_outbound_api import API_KEY, FROM, error_code, outbound, place

# Caribbean countries (with the overlays), the Pacific US territories and Canada's north (867).
AREAS = ("+1867", "+1242", "+1246", "+1264", "+1268", "+1284", "+1345", "+1441", "+1473", "+1649", "+1658", "+1876",
         "+1664", "+1721", "+1758", "+1767", "+1784", "+1809", "+1829", "+1849", "+1868", "+1869", "+1670", "+1671",
         "+1684")


def test_the_list_names_the_high_cost_areas_and_leaves_domestic_ones_alone():
    assert sorted(NANP_HIGH_COST_AREA_CODES) == sorted(AREAS)
    # Billed as US/Canada calls: Newfoundland's overlay, Puerto Rico, the US Virgin Islands, Alaska, Hawaii.
    for area in ("+1879", "+1709", "+1787", "+1939", "+1340", "+1907", "+1808", "+1415", "+1416"):
        assert destination_refusal(area + "5550123", ("+1",)) is None, area


async def test_every_listed_area_is_refused_by_the_api_and_ordinary_numbers_are_placed():
    async with outbound() as (_, fake, client):
        for area in AREAS:
            response = await place(client, to=area + "5550123")
            assert response.status_code == 403, (area, response.text)
            assert error_code(response) == "destination_not_allowed"
            message = response.json()["error"]["message"]
            assert "OUTBOUND_ALLOWED_PREFIXES" in message and area in message, message
        assert fake.requests == []  # nothing reached Twilio
        for number in ("+14155550123", "+16475550123", "+17875550123"):
            assert (await place(client, to=number)).status_code == 201, number
        assert [request.one("To") for request in fake.requests] == ["+14155550123", "+16475550123", "+17875550123"]


async def test_an_area_listed_in_outbound_allowed_prefixes_is_placed():
    async with outbound(outbound_allowed_prefixes=("+1", "+1867")) as (_, fake, client):
        assert (await place(client, to="+18675550123")).status_code == 201
        assert (await place(client, to="+18765550123")).status_code == 403  # only the area listed
        assert [request.one("To") for request in fake.requests] == ["+18675550123"]


def test_transfer_number_in_a_high_cost_area_is_refused_at_start_up():
    base = {"API_KEYS": API_KEY, "TWILIO_FROM_NUMBER": FROM}
    for number in ("+18675550111", "+18765550111", "+16715550111"):
        with pytest.raises(ConfigError, match="TRANSFER_NUMBER.*OUTBOUND_ALLOWED_PREFIXES"):
            Settings.from_env({**base, "TRANSFER_NUMBER": number})
    allowed = Settings.from_env({**base, "TRANSFER_NUMBER": "+18675550111", "OUTBOUND_ALLOWED_PREFIXES": "+1,+1867"})
    assert allowed.transfer_number == "+18675550111"
    assert Settings.from_env({**base, "TRANSFER_NUMBER": "+14155550111"}).transfer_number == "+14155550111"
