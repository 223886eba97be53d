"""Settings: file, environment and flags, and `order-gateway check-config`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from gateway.contract.settings import Settings, SettingsError, load_settings
from loadtest.harness import BIN

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_EXAMPLE = """
upstreams:
  order:        {url: "http://127.0.0.1:9101"}
  payment:      {url: "http://127.0.0.1:9102", timeout_s: 3.0,
                 breaker: {failure_rate_threshold: 0.5}}
  availability: {url: "http://127.0.0.1:9103"}
"""
BROKEN = """
server:
  port: 70000
  workers: zero
upstreams:
  payment:
    url: "ftp://example"
    breaker: {failure_rate_threshold: 1.5, minimum_calls: 0}
  availability: {timeout_s: -1, colour: blue}
redis: {url: "http://not-redis"}
"""


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "order-gateway"), "check-config", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_contract_example_and_shipped_example_are_valid(tmp_path: Path) -> None:
    contract = tmp_path / "contract.yaml"
    contract.write_text(CONTRACT_EXAMPLE)
    for path in (contract, ROOT / "config" / "gateway.example.yaml"):
        result = _check(path)
        assert result.returncode == 0, result.stderr
        assert "valid" in result.stdout


def test_every_mistake_gets_one_line_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = _check(path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    expected = [
        "server.port:", "server.workers:", "upstreams.payment.url:",
        "upstreams.payment.breaker.failure_rate_threshold:",
        "upstreams.payment.breaker.minimum_calls:", "upstreams.availability.timeout_s:",
        "upstreams.availability.colour: unknown key", "redis.url:",
    ]
    for prefix in expected:
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, lines)
    assert len(lines) == len(expected)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("server: [1, 2", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
])
def test_unreadable_files_get_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _check(path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_file(tmp_path: Path) -> None:
    result = _check(tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "cannot read file" in result.stderr


def test_environment_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("server: {port: 9000}\nupstreams: {order: {url: 'http://a:1', timeout_s: 2}}")
    env = {"GATEWAY_PORT": "9100", "GATEWAY_ORDER_URL": "http://b:2/",
           "GATEWAY_ADMIN_TOKEN": "t" * 20, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6390/0"}
    settings = load_settings(path, env=env)
    assert settings.server.port == 9100
    assert settings.upstreams.order.url == "http://b:2"
    assert settings.upstreams.order.timeout_s == 2  # the file's value survives beside the env's
    assert settings.admin.token == "t" * 20
    assert settings.redis.url == "redis://127.0.0.1:6390/0"
    flagged = load_settings(path, env=env, overrides={("server", "port"): 9200})
    assert flagged.server.port == 9200


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("server: {port: 9001}")
    assert load_settings(None, env={"GATEWAY_CONFIG": str(path)}).server.port == 9001


def test_defaults_need_no_file() -> None:
    settings = load_settings(None, env={})
    assert settings.server.port == 8080
    assert settings.server.max_body_bytes == 65536
    assert settings.admin.token is None
    assert settings.upstreams.payment.breaker.failure_rate_threshold == 0.5


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, env={"GATEWAY_PORT": "eighty"})
    assert caught.value.problems[0].startswith("server.port:")


def test_several_workers_need_a_fixed_port() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(None, env={}, overrides={("server", "port"): 0, ("server", "workers"): 2})
    assert "server.port" in caught.value.problems[0]


def test_an_enabled_waiting_room_with_several_workers_needs_redis(tmp_path: Path) -> None:
    path = tmp_path / "room.yaml"
    path.write_text("server: {workers: 2, port: 8080}\nwaiting_room: {enabled: true}\n")
    result = _check(path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "waiting_room.enabled: with server.workers > 1 the room needs redis.url, or each "
        "worker would let in admit_per_s of its own"]
    path.write_text("server: {workers: 2, port: 8080}\nwaiting_room: {enabled: true}\n"
                    "redis: {url: 'redis://127.0.0.1:6379/0'}\n")
    assert _check(path).returncode == 0
    # The secret comes from the environment too, and is never shorter than 16 characters.
    settings = load_settings(None, env={"GATEWAY_QUEUE_SECRET": "s" * 16})
    assert settings.waiting_room.secret == "s" * 16
    with pytest.raises(SettingsError) as caught:
        load_settings(None, env={"GATEWAY_QUEUE_SECRET": "short"})
    assert caught.value.problems[0].startswith("waiting_room.secret:")
    assert "short" not in caught.value.problems[0], "a secret is never echoed"
    with pytest.raises(SettingsError) as caught:
        load_settings(None, env={"GATEWAY_ADMIN_TOKEN": "x", "GATEWAY_REDIS_URL":
                                 "http://user:hunter2@redis.internal:6379"})
    shown = "\n".join(caught.value.problems)
    assert "hunter2" not in shown and "redis.url" in shown


def _keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in tree.items():
        found.add(prefix + key)
        if isinstance(value, dict):
            found |= _keys(value, prefix + key + ".")
    return found


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    found = set()
    for name, info in model.model_fields.items():
        found.add(prefix + name)
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found |= _model_keys(kind, prefix + name + ".")
    return found


def test_the_shipped_example_lists_every_key() -> None:
    """Every backend takes the same keys, so the example spells them out once, for `order`."""
    example = yaml.safe_load((ROOT / "config" / "gateway.example.yaml").read_text())
    other_backends = ("upstreams.payment.", "upstreams.availability.")
    wanted = {key for key in _model_keys(Settings) if not key.startswith(other_backends)}
    assert wanted - _keys(example) == set()


def test_a_lease_shorter_than_a_claim_can_be_held_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={}, overrides={("idempotency", "lease_s"): 5.0,
                                         ("upstreams", "order", "timeout_s"): 1.0,
                                         ("upstreams", "payment", "timeout_s"): 3.0})
    assert caught.value.problems == [
        "idempotency.lease_s: must be more than 6.9 s (twice upstreams.payment.timeout_s plus "
        "two Redis timeouts and two replica acknowledgement waits), so a claim cannot run out "
        "while its request is still in flight"]


@pytest.mark.parametrize(("acks", "timeout_ms", "problem"), [
    (-1, 200, "redis.min_replica_acks:"),
    ("some", 200, "redis.min_replica_acks:"),
    (6, 200, "redis.min_replica_acks:"),
    (float("inf"), 200, "redis.min_replica_acks:"),
    ("auto", 0, "redis.replica_ack_timeout_ms:"),
    ("auto", 5001, "redis.replica_ack_timeout_ms:"),
])
def test_replica_acknowledgement_nonsense_is_refused(tmp_path: Path, acks: object,
                                                     timeout_ms: int, problem: str) -> None:
    path = tmp_path / "acks.yaml"
    path.write_text(yaml.safe_dump({"redis": {"min_replica_acks": acks,
                                              "replica_ack_timeout_ms": timeout_ms}}))
    result = _check(path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(problem), line


def test_replica_acknowledgements_default_to_auto_and_take_a_fixed_count() -> None:
    assert load_settings(env={}).redis.min_replica_acks == "auto"
    assert load_settings(env={}).redis.replica_ack_timeout_ms == 200
    fixed = load_settings(env={}, overrides={("redis", "min_replica_acks"): 2})
    assert fixed.redis.min_replica_acks == 2


def test_the_retired_dedups_by_key_is_named_not_obeyed() -> None:
    # It once let the gateway resend keyed POSTs; nothing may make such a resend safe now.
    with pytest.raises(SettingsError) as caught:
        load_settings(env={}, overrides={("upstreams", "payment", "dedups_by_key"): True})
    (line,) = caught.value.problems
    assert line.startswith("upstreams.payment: dedups_by_key: no longer a setting")


def test_a_head_budget_smaller_than_one_allowed_head_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={}, overrides={("server", "max_headers"): 200,
                                         ("server", "max_buffered_head_bytes"): 1024 * 1024})
    assert caught.value.problems == [
        "server: max_buffered_head_bytes: must hold at least one head of the largest size the "
        "other limits allow (1642096 bytes)"]
