"""gateway: a Twilio Media Streams <-> OpenAI Realtime bridge with exact, mark-based barge-in."""

__version__ = "0.1.0"
