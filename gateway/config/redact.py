"""URLs and secrets made safe to show: :func:`redact_url`, and URL checks whose errors never quote a password."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from .setting import ConfigError

REDACTED = "***"
# Query parameters whose value is shown as *** (api-key=, access_token=, sig=, password=, ...).
_SECRET_QUERY_NAME = re.compile(r"key|token|secret|pass|pwd|sig|auth|cred|session", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` safe to log or show: its password and secret-looking query values replaced by ``***``.

    ``redis://:hunter2@cache:6379/0`` -> ``redis://:***@cache:6379/0``; ``wss://h/v1?api-key=k&model=m`` ->
    ``wss://h/v1?api-key=***&model=m``. A user name without a password is kept for database-like schemes
    (``postgresql://app@db/x``) and hidden for web schemes (``https://TOKEN@host``); a fragment is hidden.
    When the credentials are ambiguous (a password holding an unescaped ``/``, ``?`` or ``#``) everything
    before the ``@`` is hidden, and a value that is not ``scheme://...`` at all is shown as ``***``: this
    is for display only, it may over-redact but never leaks.
    """
    url = str(url)
    scheme_match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme_match is None:
        # Not scheme://...: a bare password, a libpq "host=db password=..." string, "user:pw@host"...
        return REDACTED if url else ""
    scheme = scheme_match.group(1).lower()
    head, rest = url[:scheme_match.end()], url[scheme_match.end():]
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        if any(c in userinfo for c in "/?#"):
            userinfo = REDACTED
        elif ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
        elif scheme in ("http", "https", "ws", "wss") and userinfo:
            userinfo = REDACTED
        head += userinfo + "@"
    rest, hash_sign, fragment = rest.partition("#")  # never sent to a server; may be a secret's unescaped tail
    fragment = REDACTED if fragment else ""
    path, question_mark, query = rest.partition("?")
    if question_mark:
        params = []
        for param in query.split("&"):
            name, equals, _value = param.partition("=")
            params.append(f"{name}={REDACTED}" if equals and _SECRET_QUERY_NAME.search(name) else param)
        query = "&".join(params)
    return head + path + question_mark + query + hash_sign + fragment


def split_url(name: str, url: str) -> SplitResult:
    """``urlsplit(url)``, or a ConfigError naming ``name`` and showing the URL redacted."""
    try:
        return urlsplit(url)
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL, got {redact_url(url)!r}") from None


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: traffic to it never leaves this machine."""
    import ipaddress

    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
