"""What the HTTP API answers, as pydantic models: the OpenAPI description (``gateway.api.openapi``) is generated from
them, and the tests check the API's real answers against them (``extra="forbid"``: a field the handlers add without
adding it here fails), so the description cannot drift from what is sent.

The request side is in ``gateway.api.requests``.
"""

from __future__ import annotations

from typing import Literal

import pydantic
from pydantic import ConfigDict, Field

from gateway.store import CALL_STATUSES

CALL_SID_PATTERN = r"^CA[0-9a-fA-F]{32}$"


class ErrorDetail(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(examples=["invalid_field", "twilio_error"], description="Stable, for programs.")
    message: str = Field(description="For people: what was wrong, never an echo of a large input.")
    field: str | None = Field(None, description="The request field or parameter at fault, when there is one.")
    fields: list[str] | None = Field(None, description="The unknown fields or parameters (400 only).")
    twilio_code: int | None = Field(None, description="Twilio's error code (502 only).")
    twilio_status: int | None = Field(None, description="Twilio's HTTP status (502 only).")
    call_status: str | None = Field(None, description="The call's status (409 only).")


class Error(pydantic.BaseModel):
    """Every error of the API: ``{"error": {"code", "message", ...}}`` (``gateway.api.errors``)."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class CallCreated(pydantic.BaseModel):
    """A call Twilio took (``POST /calls``, 201) or is ending (``POST /calls/{sid}/hangup``, 202)."""

    model_config = ConfigDict(extra="forbid")

    call_sid: str = Field(pattern=CALL_SID_PATTERN)
    status: Literal[CALL_STATUSES]  # type: ignore[valid-type]


class ControlAccepted(pydantic.BaseModel):
    """A control request (hang up, transfer, say) accepted by the instance holding the live call."""

    model_config = ConfigDict(extra="forbid")

    call_sid: str = Field(pattern=CALL_SID_PATTERN)
    action: Literal["hangup", "transfer", "say", "instruct"]
    accepted: bool
    instance: str = Field(description="The instance (INSTANCE_ID) holding the call.")
