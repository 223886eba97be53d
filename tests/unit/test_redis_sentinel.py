"""`redis+sentinel://` URLs: parsed, defaulted, refused when they lack a part.

A gateway following the master through a real failover is tested in tests/system/test_failover.py.
"""

from __future__ import annotations

import pytest

from gateway.contract import redis_sentinel
from gateway.contract.settings import SettingsError, load_settings


def test_sentinel_urls_parse_with_defaults_and_refuse_what_they_lack() -> None:
    target = redis_sentinel.parse("redis+sentinel://u:p%40ss@a:26380,b/svc/3")
    assert target == redis_sentinel.SentinelTarget((("a", 26380), ("b", 26379)), "svc", 3,
                                                   "u", "p@ss")
    assert redis_sentinel.parse("redis://localhost:6379/0") is None
    for bad in ("redis+sentinel://a:1", "redis+sentinel:///svc", "redis+sentinel://a/s/1/x"):
        with pytest.raises(ValueError):
            redis_sentinel.parse(bad)


def test_settings_take_a_sentinel_url_and_refuse_a_broken_one() -> None:
    good = load_settings(env={"GATEWAY_REDIS_URL": "redis+sentinel://s1,s2:26380/svc"})
    assert good.redis.url == "redis+sentinel://s1,s2:26380/svc"
    with pytest.raises(SettingsError, match=r"redis\.url"):
        load_settings(env={"GATEWAY_REDIS_URL": "redis+sentinel://s1"})
