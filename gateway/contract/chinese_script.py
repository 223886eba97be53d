"""Simplified and Traditional Chinese, converted by OpenCC.

The catalog's Traditional text is written by hand (`errors.py`). What an SRE
types at 3 a.m. is not: an announcement given in one script is converted to
the other once, when its maintenance window is set, never per request. OpenCC
converts phrases, not only characters, with Taiwan's usage (`s2twp`: 网络 ->
網路, 数据库 -> 資料庫) and back (`tw2sp`). Readers in Hong Kong read Taiwan's
usage; an SRE who wants their own wording gives the `zh-Hant` text, which then
stands as written.
"""

from __future__ import annotations

from functools import cache

import opencc


@cache
def _converter(config: str) -> opencc.OpenCC:
    return opencc.OpenCC(config)  # loads its dictionaries: once per process


def load() -> None:
    """Load both dictionaries now (a few hundred milliseconds): at start-up, so that setting a
    window never blocks the event loop on them."""
    _converter("s2twp")
    _converter("tw2sp")


def to_traditional(text: str) -> str:
    return str(_converter("s2twp").convert(text))


def to_simplified(text: str) -> str:
    return str(_converter("tw2sp").convert(text))
