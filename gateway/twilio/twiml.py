"""TwiML the gateway answers with, and the public URLs it puts in it."""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse

from gateway.twilio.numbers import is_sip_uri

INCOMING_CALL_PATH = "/incoming-call"  # the voice webhook of a Twilio number ("A call comes in")
MEDIA_STREAM_PATH = "/media-stream"
_MAX_PARAMETER_CHARS = 500  # Twilio's limit for a <Parameter> name and value


def stream_url(base_url: str, path: str = MEDIA_STREAM_PATH) -> str:
    """The WebSocket URL for ``<Stream>``: wss for https, ws for plain http (local use), no query string
    (per-call data goes in the path: ``/media-stream/<credential>``, or in ``<Parameter>``s)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"


def connect_stream_twiml(url: str, parameters: Mapping[str, str], status_callback: str = "",
                         fallback_message: str = "") -> str:
    """``<Response><Connect><Stream url=...>`` with per-call data as ``<Parameter>`` (Twilio drops query strings).

    Twilio runs the verbs after ``</Connect>`` when the stream closes while the caller is still on the line: the
    gateway gave up on the call (no model, a fault, a refused stream). ``fallback_message`` is said there, then
    the call ends, so a call never ends in silence. A call the gateway ends on purpose is hung up over the REST
    API first (or transferred, which replaces this TwiML), so the message is not heard then."""
    response = VoiceResponse()
    connect = response.connect()
    stream = connect.stream(url=url, status_callback=status_callback) if status_callback else connect.stream(url=url)
    for name, value in parameters.items():
        if value:
            stream.parameter(name=name[:_MAX_PARAMETER_CHARS], value=str(value)[:_MAX_PARAMETER_CHARS])
    _say_and_hang_up(response, fallback_message)
    return str(response)


def say_and_hang_up_twiml(message: str) -> str:
    """Say ``message``, then end the call (every line busy; a voicemail left after the beep)."""
    response = VoiceResponse()
    _say_and_hang_up(response, message)
    return str(response)


def _say_and_hang_up(response: VoiceResponse, message: str) -> None:
    if message:
        response.say(message)
    response.hangup()


def dial_twiml(destination: str) -> str:
    """``<Dial>``: hand the live call over to a human, at a phone number or a SIP URI."""
    response = VoiceResponse()
    if is_sip_uri(destination):
        response.dial().sip(destination)
    else:
        response.dial(destination)
    return str(response)
