"""One settings object for the whole gateway, read from the environment (and a ``.env`` file in the working directory).

Every knob has a default that works on a laptop: with no API key the gateway talks to the embedded
Realtime-compatible server (``gateway.local``) instead of OpenAI.

Each setting is declared once, as a :class:`Setting` (its variable, type, default, bounds or choices, whether it
is secret, its description) in ``model.py``, ``serving.py`` or ``operations.py``; :class:`Settings` and its
``from_env``, the call core's ``CallConfig`` defaults and the README's table (``table.py``) derive from them.
"""

from __future__ import annotations

from . import model, operations, serving
from .redact import REDACTED, is_loopback_host, redact_url, split_url
from .setting import ConfigError, Setting
from .settings import DECLARED, Settings, load_dotenv_from_working_directory

# The defaults other modules name, from their declarations.
DEFAULT_REALTIME_URL = model.REALTIME_URL.default
DEFAULT_INSTRUCTIONS = model.INSTRUCTIONS.default
TURN_DETECTION_TYPES = model.TURN_DETECTION.choices
DEFAULT_FALLBACK_MESSAGE = serving.FALLBACK_MESSAGE.default
DEFAULT_TWILIO_API_BASE_URL = operations.TWILIO_API_BASE_URL.default
DEFAULT_STORE_URL = operations.STORE_URL.default

__all__ = ["DECLARED", "DEFAULT_FALLBACK_MESSAGE", "DEFAULT_INSTRUCTIONS", "DEFAULT_REALTIME_URL", "DEFAULT_STORE_URL",
           "DEFAULT_TWILIO_API_BASE_URL", "REDACTED", "TURN_DETECTION_TYPES", "ConfigError", "Setting", "Settings",
           "is_loopback_host", "load_dotenv_from_working_directory", "redact_url", "split_url"]
