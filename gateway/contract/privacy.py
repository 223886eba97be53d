"""Personal data kept out of logs, metrics and error bodies.

The gateway never logs bodies or query strings, and its metrics are labelled
by route template and code only. What can still carry personal data is text
a client controls that gets echoed: a request path (`/v1/orders/13800138000`),
or an exception's text (pydantic quotes the input it refused). `scrub` masks,
in such text, every run that looks like a resident ID, a mobile number or any
other long number (spaced or not), keeping the last four characters so support can still
match a case: `*******8000`.
"""

from __future__ import annotations

import re

KEEP = 4
# Any run of 7 or more digits, single spaces or dashes allowed between them (as
# people type phone numbers), with a trailing X (resident IDs): \d and \s include
# the full-width digits and space.
_SENSITIVE = re.compile(r"(?<!\d)\+?\d(?:[\s-]?\d){6,}(?:[\s-]?[Xx](?![A-Za-z]))?")
# Seven digits with anything between them: a cheap necessary condition for _SENSITIVE.
_SEVEN_DIGITS_ANYHOW = re.compile(r"(?:\d\D{0,2}){7}")
# Just the shapes of resident IDs and mobile numbers (an id of digits may be a timestamp).
_PERSONAL = re.compile(r"(?<!\d)(?:\d{17}[\dXx]|(?:\+?86)?1[3-9]\d{9})(?!\d)")
_ELEVEN_DIGITS = re.compile(r"\d{11}")
# pydantic's error text quotes the refused input: `input_value='...'`.
_QUOTED_INPUT = re.compile(r"input_value=('[^']*'|\"[^\"]*\"|[^,\]\s]+)")


def mask(value: str, keep: int = KEEP) -> str:
    """All but the last `keep` characters as `*` (all of a short value)."""
    if len(value) <= keep:
        return "*" * len(value)
    return "*" * (len(value) - keep) + value[-keep:]


def scrub(text: str) -> str:
    if _SEVEN_DIGITS_ANYHOW.search(text) is None:
        return text  # the usual case, found without the costlier pattern
    return _SENSITIVE.sub(lambda match: mask(match.group()), text)


def looks_personal(text: str) -> bool:
    """Shaped like a resident ID or a mobile number: not to be echoed or logged."""
    # Both shapes hold 11 digits in a row; most texts have none, and that is cheap to see.
    return _ELEVEN_DIGITS.search(text) is not None and _PERSONAL.search(text) is not None


def scrub_exception_text(text: str) -> str:
    return scrub(_QUOTED_INPUT.sub("input_value=<redacted>", text))
