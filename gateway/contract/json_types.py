"""JSON value types shared by the request schemas and the settings.

JSON has one number type: `59.0` and `59` are the same integer to JSON Schema,
and so to every client library that writes whole numbers with a decimal point.
Strict validation (which must still refuse `true` and `"59"`) would refuse
`59.0`; `ACCEPT_WHOLE_FLOATS` turns it into 59 first, and nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value  # anything else goes to the strict integer check as it came


# Every integer a client, an SRE or a file gives: one policy for all of them (the published
# document says so), so that no field refuses `59.0` while another accepts it.
WHOLE_NUMBERS_RULE = ("Integer fields accept a whole number written with a decimal point "
                      "(`59.0` is 59); a fraction, a string or a boolean is refused.")

# Placed after the type's constraints (`Annotated[int, Field(gt=0), ACCEPT_WHOLE_FLOATS]`),
# so that they still appear in the published schema.
ACCEPT_WHOLE_FLOATS = BeforeValidator(_whole)

# An integer field read with that policy; its constraints go in `Field(...)` as usual.
WholeInt = Annotated[int, ACCEPT_WHOLE_FLOATS]


def _instant(value: Any) -> Any:
    """ISO-8601 text to a time in UTC (one without an offset is taken as UTC); a time
    given already (a YAML timestamp) as it is; anything else refused."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO-8601 time, like 2026-12-04T20:00:00Z") from None
    if not isinstance(value, datetime):
        raise ValueError("must be an ISO-8601 time, like 2026-12-04T20:00:00Z")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A point in time as JSON writes it: text, even under strict validation (which would take
# only a datetime object, and no JSON has one).
Instant = Annotated[datetime, BeforeValidator(_instant)]
