"""The call-replay harness: a Twilio-faithful phone that calls a gateway and measures what a caller lives."""

from .phone import CallerTurn, Phone, run_call
from .report import CallReport, ClearRecord, MarkRecord, PlaybackRun, TurnReport, Violation
from gateway.wavio import load_sample, read_wav, sample_names, to_mulaw_8k, write_wav

__all__ = [
    "CallReport",
    "CallerTurn",
    "ClearRecord",
    "MarkRecord",
    "Phone",
    "PlaybackRun",
    "TurnReport",
    "Violation",
    "load_sample",
    "read_wav",
    "run_call",
    "sample_names",
    "to_mulaw_8k",
    "write_wav",
]
