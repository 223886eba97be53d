"""The tracing module's pure parts: the samplers decided without the SDK agree with the
SDK's own samplers, the settings come from the standard variables, and the SDK's
complaints are held to one a minute."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from gateway.contract.settings import SettingsError, TracingSettings, load_settings
from gateway.ops.tracing import Decision, _OncePerMinute

SDK_SAMPLERS = {
    "always_on": lambda ratio: sampling.ALWAYS_ON,
    "always_off": lambda ratio: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda ratio: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio,
}


@pytest.mark.parametrize("name", list(SDK_SAMPLERS))
@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.5, 1.0])
def test_each_sampler_decides_as_the_sdks_own(name: str, ratio: float) -> None:
    ours = Decision.of(TracingSettings(sampler=name, sampler_arg=ratio))  # type: ignore[arg-type]
    theirs = SDK_SAMPLERS[name](ratio)
    rng = random.Random(7)
    for _ in range(2000):
        trace_id = rng.getrandbits(128) or 1
        flags = rng.choice([None, 0, 1])
        parent = None
        if flags is not None:
            parent = set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id, rng.getrandbits(64) or 1, is_remote=True,
                trace_flags=TraceFlags(flags))))
        expected = theirs.should_sample(parent, trace_id, "GET /v1/x").decision.is_sampled()
        assert ours.sampled(trace_id, flags) is expected, (trace_id, flags)


def test_the_standard_variables_configure_tracing_and_win_over_the_file(
        tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("tracing:\n  exporter: none\n  service_name: from-file\n")
    settings = load_settings(path, env={
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_SERVICE_NAME": "shop-gateway", "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_BSP_SCHEDULE_DELAY": "1000",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).tracing
    assert settings.enabled and settings.endpoint == "http://collector:4318"
    assert (settings.service_name, settings.sampler, settings.sampler_arg) == (
        "shop-gateway", "traceidratio", 0.25)
    assert (settings.schedule_delay_ms, settings.protocol) == (1000, "grpc")


def test_tracing_is_off_and_one_percent_parent_based_by_default() -> None:
    settings = load_settings(env={}).tracing
    assert not settings.enabled
    assert (settings.sampler, settings.sampler_arg) == ("parentbased_traceidratio", 0.01)


@pytest.mark.parametrize(("variable", "value"), [
    ("OTEL_TRACES_SAMPLER", "sometimes"), ("OTEL_TRACES_SAMPLER_ARG", "2"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_TRACES_EXPORTER", "zipkin"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])
def test_a_wrong_variable_stops_the_start_with_its_key(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={variable: value})
    assert caught.value.problems[0].startswith("tracing.")


def test_the_sdks_complaints_are_held_to_one_a_minute() -> None:
    limit = _OncePerMinute(every_s=3600)

    def record(text: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.exporter", logging.WARNING, "", 0, text,
                                 None, None)

    assert limit.filter(record("collector down"))
    assert not any(limit.filter(record("collector down")) for _ in range(50))
    limit._last -= 3600  # an hour later
    later = record("collector down")
    assert limit.filter(later) and "50 more such messages" in later.getMessage()
