"""Phone numbers: E.164 validation and the toll-fraud guard for outbound calls.

An outbound API that dials any number it is given is a toll-fraud machine: whoever holds (or steals) an API key
can make the gateway call premium-rate or revenue-share numbers and bill the account. So a destination must
(1) be E.164, (2) start with an allowed prefix (``OUTBOUND_ALLOWED_PREFIXES``, default ``+1``), and (3) never start
with a prefix of :data:`PREMIUM_RATE_PREFIXES`, whatever the allow-list says.

NANP (+1) also covers places whose area codes look domestic but are billed far above a US/Canada call: the
Caribbean countries (billed as international, the "one-ring" revenue-share fraud areas), the Pacific US territories
and Canada's north (867). :data:`NANP_HIGH_COST_AREA_CODES` are refused unless the allow-list names them explicitly
(``+1876``, ``+1867``), so the default ``+1`` means the contiguous US, Alaska, Hawaii, Puerto Rico, the US Virgin
Islands and Canada's provinces.

Twilio's own Geo Permissions (console: Voice > Settings > Geo permissions) are the second line of defence: keep
them as narrow as this list.
"""

from __future__ import annotations

import re
from typing import Iterable

# ASCII digits only: ``\d`` would accept any Unicode digit, and fullmatch() avoids ``$`` accepting a trailing newline.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_PREFIX = re.compile(r"\+[0-9]{0,14}")

# NANP 5XX area codes assigned to personal communications services (PCS): non-geographic, caller-paid, and used
# for "follow-me" forwarding that can end anywhere (historically abroad, at adult lines). Source: NANPA's 5XX-NXX
# resource page and the NANP area-code lists. None of these is a geographic area code: the geographic 5XX codes
# between them (e.g. 531, 534, 548 Ontario, 551, 557, 564, 579 Quebec) are deliberately absent and stay callable.
NANP_PCS_AREA_CODES: tuple[str, ...] = (
    "500", "521", "522", "523", "524", "525", "526", "527", "528", "529", "532", "533", "535", "538",
    "542", "543", "544", "545", "546", "547", "549", "550", "552", "553", "554", "556", "558", "566", "569",
    "577", "578", "588", "589",
)

# Premium-rate, revenue-share and high-cost network prefixes: ALWAYS refused.
# Sources: national numbering plans (Ofcom, ARCEP, BNetzA, NANPA, ...) and the ITU-T E.164 list of
# international networks. A prefix here blocks every number that starts with it.
PREMIUM_RATE_PREFIXES: dict[str, str] = {
    # North America (NANP): premium and non-geographic area codes. None of them is a place a phone agent calls;
    # all of them can be billed far above a domestic call.
    "+1900": "US/Canada 900 premium rate",
    "+1456": "NANP 456 inbound international carrier services (non-geographic)",
    "+1600": "Canada 600 non-geographic services (caller-pays mobile, data)",
    "+1622": "Canada 622 non-geographic services (expansion of 600)",
    "+1700": "NANP 700 carrier services (non-geographic)",
    "+1710": "US 710 federal government (non-geographic)",
    # 880-882 let callers outside a toll-free number's area reach it at their own, international, expense. The other
    # 88X codes (883-887, 889) are reserved for future ordinary toll-free service and 888 is one: not listed.
    "+1880": "NANP 880 paid toll-free (caller pays international rates)",
    "+1881": "NANP 881 paid toll-free (caller pays international rates)",
    "+1882": "NANP 882 paid toll-free (caller pays international rates)",
    **{f"+1{code}": f"NANP {code} personal communications service (non-geographic)" for code in NANP_PCS_AREA_CODES},
    # United Kingdom
    "+449": "UK 09 premium rate",
    "+44871": "UK 0871 revenue share",
    "+44872": "UK 0872 revenue share",
    "+44873": "UK 0873 revenue share",
    "+4470": "UK 070 personal numbering (fraud-prone)",
    "+4476": "UK 076 pagers (premium-priced)",
    # France
    "+3381": "France 081 premium rate (SVA)",
    "+3382": "France 082 premium rate (SVA)",
    "+3389": "France 089 premium rate (SVA)",
    # Germany
    "+49900": "Germany 0900 premium rate",
    "+49137": "Germany 0137 mass calling / televoting",
    "+49118": "Germany 118 directory services",
    "+4919": "Germany 019x premium / online services (legacy)",
    "+49180": "Germany 0180 shared-cost service numbers",
    "+49700": "Germany 0700 personal numbers",
    # Italy
    "+39899": "Italy 899 premium rate",
    "+39892": "Italy 892 premium information services",
    "+39895": "Italy 895 premium rate",
    "+39144": "Italy 144 premium rate (legacy)",
    "+39166": "Italy 166 premium rate (legacy)",
    # Spain
    "+34803": "Spain 803 premium rate (adult)",
    "+34806": "Spain 806 premium rate",
    "+34807": "Spain 807 premium rate",
    "+34905": "Spain 905 mass calling",
    # Netherlands, Belgium, Switzerland, Austria, Ireland, Australia
    "+31900": "Netherlands 0900 premium rate",
    "+31906": "Netherlands 0906 premium rate",
    "+31909": "Netherlands 0909 premium rate",
    "+3290": "Belgium 090x premium rate",
    "+3270": "Belgium 070 shared-cost numbers",
    "+41900": "Switzerland 0900 premium rate",
    "+41901": "Switzerland 0901 premium rate",
    "+41906": "Switzerland 0906 premium rate",
    "+43900": "Austria 0900 premium rate",
    "+43930": "Austria 0930 premium rate",
    "+43939": "Austria 0939 premium rate",
    "+35315": "Ireland 15xx premium rate",
    "+61190": "Australia 190x premium rate",
    # International networks (no country): satellite and shared/premium services, very high cost
    "+808": "International Shared Cost Service",
    "+870": "Inmarsat satellite",
    "+881": "Global Mobile Satellite System",
    "+882": "International networks",
    "+883": "International networks",
    "+979": "International Premium Rate Service",
}

# NANP area codes billed far above a US/Canada call: refused unless OUTBOUND_ALLOWED_PREFIXES names the area code
# itself (e.g. +1876). The one list the guard reads (README, "Toll-fraud guard", points here).
# Sources: NANPA's list of NANP countries and area codes (nationalnanpa.com, "Area codes by location"); the FTC's
# "one-ring" scam warnings (268, 284, 473, 649, 664, 767, 809/829/849, 876) and the carriers' lists of the
# Caribbean codes that look domestic but are international; for 867, Wikipedia "Area code 867": "the most expensive
# geographic calling area in Canada" (carriers add a per-minute premium to call 1-867).
# Decisions:
# - Every Caribbean NANP country, including the overlays (658 Jamaica; 829, 849 Dominican Republic): international.
# - 867 (Yukon, Northwest Territories, Nunavut): surcharged by carriers, a known destination for traffic pumping.
#   879 is NOT listed: it is the Newfoundland and Labrador overlay of 709, an ordinary Canadian rate area.
# - The Pacific US territories (670 Northern Mariana Islands, 671 Guam, 684 American Samoa) are listed: retail US
#   plans bill them as domestic (FCC rate integration), but CPaaS providers such as Twilio price each as its own
#   destination (its own Geo Permissions entry) at rates many times a US minute, and they are remote islands an
#   agent of a US/Canadian business rarely calls.
# - Puerto Rico (787, 939) and the US Virgin Islands (340) are NOT listed: billed at or near US rates, populous,
#   commonly called by US businesses. Operators who never call them can still narrow OUTBOUND_ALLOWED_PREFIXES.
NANP_HIGH_COST_AREA_CODES: dict[str, str] = {
    # Caribbean and Atlantic countries: international calls
    "+1242": "Bahamas", "+1246": "Barbados", "+1264": "Anguilla", "+1268": "Antigua and Barbuda",
    "+1284": "British Virgin Islands", "+1345": "Cayman Islands", "+1441": "Bermuda", "+1473": "Grenada",
    "+1649": "Turks and Caicos", "+1658": "Jamaica", "+1664": "Montserrat", "+1721": "Sint Maarten",
    "+1758": "Saint Lucia", "+1767": "Dominica", "+1784": "Saint Vincent and the Grenadines",
    "+1809": "Dominican Republic", "+1829": "Dominican Republic", "+1849": "Dominican Republic",
    "+1868": "Trinidad and Tobago", "+1869": "Saint Kitts and Nevis", "+1876": "Jamaica",
    # Pacific US territories: priced as their own destinations by CPaaS providers
    "+1670": "the Northern Mariana Islands", "+1671": "Guam", "+1684": "American Samoa",
    # Canada's north: the most expensive geographic area in Canada
    "+1867": "northern Canada (Yukon, Northwest Territories, Nunavut)",
}


def is_e164(number: str) -> bool:
    """``+`` then 7 to 15 ASCII digits, no leading zero (ITU-T E.164)."""
    return isinstance(number, str) and _E164.fullmatch(number) is not None


def is_sip_uri(destination: str) -> bool:
    """A SIP address (``sip:`` or ``sips:``, any case) rather than a phone number."""
    return isinstance(destination, str) and destination.lower().startswith(("sip:", "sips:"))


def is_prefix(prefix: str) -> bool:
    """An allow-list entry: ``+`` followed by up to 14 digits.

    ``+`` alone matches too (it would allow every country); the configuration refuses it separately, with a message
    that says why.
    """
    return isinstance(prefix, str) and _PREFIX.fullmatch(prefix) is not None


# NANP pay-per-call lives in an exchange, not an area code: +1 NPA 976 XXXX in any area.
NANP_PAY_PER_CALL_EXCHANGE = "976"


def premium_rate_match(number: str) -> str | None:
    """The premium-rate prefix ``number`` starts with, or None."""
    for prefix in PREMIUM_RATE_PREFIXES:
        if number.startswith(prefix):
            return prefix
    # Matched on the digits alone, not on the length of a whole NANP number, so that a refused number stays refused
    # whatever is appended to it (the guard must never depend on the caller sending exactly 10 digits).
    if number.startswith("+1") and number[5:8] == NANP_PAY_PER_CALL_EXCHANGE:
        return "+1NPA976"
    return None


def destination_refusal(number: str, allowed_prefixes: Iterable[str]) -> tuple[str, str] | None:
    """Why the gateway must not dial ``number`` as ``(error_code, message)``, or None when it may.

    ``number`` should already be valid E.164 (any text is safe: the answer is then meaningless, never an exception).
    Refusals only grow with the number: a refused number stays refused whatever digits are appended (as long as the
    allowed prefixes are no longer than the number).
    """
    premium = premium_rate_match(number)
    if premium is not None:
        return "destination_premium_rate", (
            f"destination starts with {premium} ({PREMIUM_RATE_PREFIXES.get(premium, 'NANP 976 pay-per-call exchange')}): "
            "premium-rate and high-cost "
            "numbers are always refused"
        )
    matching = [prefix for prefix in allowed_prefixes if number.startswith(prefix)]
    if not matching:
        return "destination_not_allowed", "destination is outside OUTBOUND_ALLOWED_PREFIXES"
    for area, country in NANP_HIGH_COST_AREA_CODES.items():
        if number.startswith(area) and not any(prefix.startswith(area) for prefix in matching):
            return "destination_not_allowed", (
                f"destination is in {country} ({area}), a high-cost North American area billed far above a "
                f"US/Canada call: add {area} to OUTBOUND_ALLOWED_PREFIXES to allow it"
            )
    return None
