"""The base of every wire message (:mod:`stream.messages`): the schema version, the frozen strict model, and the
field types of binary payloads (base64 in JSON) and claim-check references."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, ClassVar
from urllib.parse import unquote, urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

__all__ = ["SCHEMA_VERSION", "Base64Payload", "Reference", "Schema", "one_payload"]

SCHEMA_VERSION = 1
"""The first version of every message kind (what a message carries unless it needs a newer one of its kind)."""


def _b64decode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not valid base64: {exc}") from exc
    return value


Base64Payload = Annotated[
    bytes,
    BeforeValidator(_b64decode),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),  # deploy/schemas: base64 in JSON
]


def _check_ref(value: str) -> str:
    """A claim-check reference must parse: no NUL byte (raw or percent-encoded), a well-formed URL host part.

    ``stream.refs.resolve_ref`` would otherwise fail with a bare ValueError (``os.path.realpath``: embedded null
    byte; ``urlparse``: invalid IPv6 URL) instead of dead-lettering the message.
    """
    if "\x00" in value or "\x00" in unquote(value):
        raise ValueError("reference contains a NUL byte")
    try:
        urlparse(value)
    except ValueError as exc:
        raise ValueError(f"malformed reference: {exc}") from exc
    return value


Reference = Annotated[str, AfterValidator(_check_ref)]


class Schema(BaseModel):
    """A wire message. Each kind has its own version: ``KIND_VERSION`` is the newest this code reads (every
    version up to it); a message is written at the oldest version that can carry it, so a worker of the previous
    release reads whatever does not need the new version."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    KIND_VERSION: ClassVar[int] = SCHEMA_VERSION

    version: int = Field(SCHEMA_VERSION, ge=1)

    @model_validator(mode="after")
    def _known_version(self) -> Schema:
        newest = type(self).KIND_VERSION
        if self.version > newest:
            raise ValueError(f"schema version {self.version} is newer than this reader ({newest})")
        return self


def one_payload(data: bytes | None, ref: str | None, what: str) -> None:
    if (data is None) == (ref is None):
        raise ValueError(f"exactly one of {what} and ref must be set")
