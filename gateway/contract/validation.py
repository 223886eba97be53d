"""Edge validation: content type, body size, JSON, schema, path ids, query.

Everything here runs before any backend is called, and turns what is wrong into
one `GatewayError` from the catalog, with field-level errors where the schema
speaks. It works on plain values (bytes, strings, mappings), not on aiohttp
requests, so it is tested without sockets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from gateway.contract import errors
from gateway.contract.errors import GatewayError
from gateway.contract.field_errors import failed, from_pydantic, invalid_field
from gateway.contract.schemas import ID_PATTERN, TEXT_QUERIES, normalise_text

_ID = re.compile(ID_PATTERN)
_JSON_TYPES = ("application/json",)

def check_content_type(content_type: str) -> None:
    """A JSON route takes `application/json` (parameters such as charset allowed)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE,
                           params={"content_type": media or "(none)"})


def check_declared_length(content_length: int | None, limit: int) -> None:
    """Refuse a declared-too-large body before reading any of it."""
    if content_length is not None and content_length > limit:
        raise GatewayError(errors.PAYLOAD_TOO_LARGE, params={"limit": limit})


def parse_body(schema: type[BaseModel], raw: bytes) -> bytes:
    """Validate a JSON body; return it normalised, as it is forwarded to the backend."""
    try:
        model = schema.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", "invalid JSON")
            raise GatewayError(errors.MALFORMED_JSON, params={"reason": reason}) from None
        raise failed(from_pydantic(exc)) from None
    return model.model_dump_json().encode()


def parse_query(schema: type[BaseModel], query: Mapping[str, str]) -> BaseModel:
    try:
        return schema.model_validate(dict(query))
    except ValidationError as exc:
        raise failed(from_pydantic(exc)) from None


def query_fields(schema: type[BaseModel], query: Mapping[str, str]) -> dict[str, str]:
    """The validated, normalised query as it is forwarded.

    A query of text fields only (`schemas.TEXT_QUERIES`) is checked by hand: a
    model per request was a few per cent of a read's CPU. The check normalises
    as the model does and accepts only what the model accepts; anything else
    goes to the model, which gives the field errors."""
    fields = TEXT_QUERIES.get(schema)
    if fields is not None and (checked := text_fields(fields, query)) is not None:
        return checked
    return parse_query(schema, query).model_dump()


def text_fields(fields: tuple[tuple[str, int], ...],
                query: Mapping[str, str]) -> dict[str, str] | None:
    """The fields (name, length limit) normalised, or None if the model might refuse them."""
    checked: dict[str, str] = {}
    for name, limit in fields:
        sent = query.get(name)
        if sent is None or len(sent) > limit:
            return None
        value = normalise_text(sent)
        if not value or len(value) > limit:
            return None
        checked[name] = value
    return checked


def check_path_ids(params: Mapping[str, str]) -> None:
    for name, value in params.items():
        if not _ID.fullmatch(value):
            raise invalid_field(name, "must be 1-64 characters of A-Z a-z 0-9 _ -")
