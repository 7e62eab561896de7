"""Declarations of the model's settings and of how a call behaves (the call core's ``CallConfig`` takes its
defaults from these). One :class:`Setting` each: see ``gateway/config/setting.py``; the README's settings table is
generated from them (``python -m gateway.config --markdown``)."""

from __future__ import annotations

from gateway.audio.convert import AUDIO_FORMATS

from . import readers
from .setting import Setting, declared_in

REALTIME_API_KEY = Setting(
    "REALTIME_API_KEY", "",
    "Model API key. None: the embedded server is used.",
    secret=True, also=("OPENAI_API_KEY",), name="api_key", reader=readers.api_key,
)

AZURE_OPENAI_API_KEY = Setting(
    "AZURE_OPENAI_API_KEY", "",
    "Azure key; sent as the `api-key` header.",
    secret=True, name=None,
)

REALTIME_URL = Setting(
    "REALTIME_URL", "wss://api.openai.com/v1/realtime",
    "Model WebSocket URL. Azure: `wss://RESOURCE.openai.azure.com/openai/v1/realtime`.",
    reader=readers.realtime_url,
)

REALTIME_MODEL = Setting(
    "REALTIME_MODEL", "gpt-realtime",
    "Model (Azure: deployment), sent as `?model=`.",
)

REALTIME_API_KEY_HEADER = Setting(
    "REALTIME_API_KEY_HEADER", "authorization",
    "`authorization` (Bearer) or `api-key`; auto picks `api-key` for Azure hosts.",
    choices=("authorization", "api-key"), shown="auto", name="api_key_header", reader=readers.api_key_header,
)

VOICE = Setting(
    "VOICE", "marin",
    "Model voice.",
)

INSTRUCTIONS = Setting(
    "INSTRUCTIONS", ("You are a helpful, concise voice assistant on a phone call. Keep answers short and speak "
                  "naturally."),
    "Session instructions.",
    strip=False,
)

AUDIO_FORMAT = Setting(
    "AUDIO_FORMAT", "pcm16",
    "`pcm16` (transcode to 24 kHz PCM) or `pcmu` (mu-law pass-through, no transcoding).",
    choices=AUDIO_FORMATS,
)

TURN_DETECTION = Setting(
    "TURN_DETECTION", "server_vad",
    "`server_vad`, `semantic_vad` or `none`.",
    choices=("server_vad", "semantic_vad", "none"),
)

VAD_THRESHOLD = Setting(
    "VAD_THRESHOLD", 0.5,
    "server_vad: the speech probability that starts a turn.",
    low=0.0, high=1.0,
)

VAD_PREFIX_PADDING_MS = Setting(
    "VAD_PREFIX_PADDING_MS", 300,
    "server_vad: audio kept from before the speech started.",
    low=0, high=5000,
)

VAD_SILENCE_DURATION_MS = Setting(
    "VAD_SILENCE_DURATION_MS", 500,
    "server_vad: the silence that ends a turn.",
    low=50, high=10000,
)

VAD_EAGERNESS = Setting(
    "VAD_EAGERNESS", "auto",
    "semantic_vad eagerness.",
    choices=("auto", "low", "medium", "high"),
)

INTERRUPT_RESPONSE = Setting(
    "INTERRUPT_RESPONSE", True,
    "The model cancels its own response when the caller speaks. If false, the gateway cancels.",
)

TRANSCRIPTION_MODEL = Setting(
    "TRANSCRIPTION_MODEL", "",
    "Caller transcription model, e.g. `gpt-4o-mini-transcribe`.",
)

AGENT_SPEAKS_FIRST = Setting(
    "AGENT_SPEAKS_FIRST", False,
    "Send a greeting response as soon as the session is configured.",
)

GREETING_INSTRUCTIONS = Setting(
    "GREETING_INSTRUCTIONS", "",
    "Instructions for that greeting.",
    strip=False,
)

TOOLS_MODULE = Setting(
    "TOOLS_MODULE", "",
    "A Python module whose public functions become the agent's tools: its name (`my_tools`, "
    "`package.tools`), looked up on the import path, then in the working directory (`my_tools.py` beside "
    "you). One that cannot be imported stops `gateway serve` with one line and the fix; `gateway doctor` "
    "says the same.",
)

TOOL_TIMEOUT_S = Setting(
    "TOOL_TIMEOUT_S", 10.0,
    "How long a tool may run before the model is told it failed.",
    low=0.1, high=600.0,
)

MODEL_RECONNECT = Setting(
    "MODEL_RECONNECT", True,
    "Replace a model session that dies or expires, carrying the conversation over as text.",
)

MODEL_WAIT_PROMPT = Setting(
    "MODEL_WAIT_PROMPT", "",
    "A short line said once per model outage (no session for half a second: a refused or slow connect at "
    'the start of a call, a loss), before the comfort noise: `one_moment` ("One moment, please.", '
    "bundled), the path of a WAV file of at most 5 s (read at start-up; any rate, mono or stereo, "
    "converted to 8 kHz mu-law), or `none`. A bad value fails the start.",
    reader=readers.wait_prompt,
)

MODEL_SESSION_LIMIT_S = Setting(
    "MODEL_SESSION_LIMIT_S", 3600.0,
    "How long a model session may last (OpenAI's: 60 minutes; with the embedded server, its "
    "`LOCAL_SESSION_LIMIT_S` when smaller). 0: unknown, no rollover ahead of it.",
    low=0.0, high=86400.0,
)

MODEL_ROLLOVER_MARGIN_S = Setting(
    "MODEL_ROLLOVER_MARGIN_S", 300.0,
    "The next session is prepared this long before the limit (at most half of it), at the first quiet "
    "point.",
    low=0.0, high=86400.0,
)

CALLER_AUDIO_BATCH_MS = Setting(
    "CALLER_AUDIO_BATCH_MS", 0,
    "Caller audio goes to the model in batches of this many ms (up to 200) instead of one message per 20 "
    "ms frame: fewer messages, but the model hears the caller up to that much later (turn latency and "
    "barge-in detection grow by about half of it on average). Off by default.",
    low=0, high=200,
)

TWILIO_AUDIO_LEAD_MS = Setting(
    "TWILIO_AUDIO_LEAD_MS", 500,
    "Agent audio is sent to Twilio at most this far ahead of its playback (see "
    "[Barge-in](#barge-in-exactly)); 0: as it comes.",
    low=0, high=60_000,
)

MARK_INTERVAL_MS = Setting(
    "MARK_INTERVAL_MS", 100,
    "Longest chunk of agent audio between two marks.",
    low=20, high=2000,
)

LOCAL_AGENT = Setting(
    "LOCAL_AGENT", "echo",
    "The embedded server's agent: `echo`, or `scripted:PATH.toml`.",
)

LOCAL_REALTIME_PORT = Setting(
    "LOCAL_REALTIME_PORT", 0,
    "Port of the embedded server when it is used.",
    low=0, high=65535, shown="{} (any)",
)

LOCAL_SESSION_LIMIT_S = Setting(
    "LOCAL_SESSION_LIMIT_S", 3600.0,
    "The embedded server's session limit: at it, `session_expired` and a close 1001, as OpenAI does (a "
    "few seconds, to test rollovers).",
    low=1.0, high=86400.0,
)

SETTINGS = declared_in(globals())
