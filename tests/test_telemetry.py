"""naosd.telemetry: the hooks when tracing is off, the traceparent check, the
telemetry.* settings, and a start without the otel extra.  The spans
themselves are tested against the real daemon (test_telemetry_e2e.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from naosd import telemetry
from naosd.config import load
from naosd.errors import ConfigError

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def cfg(**environ: str):
    return load(environ=environ, uid=1000, home=Path("/home/u"))


def test_off_every_hook_is_the_one_shared_no_op():
    assert not telemetry.enabled()
    span = telemetry.span("agent.run", "server", {"a": 1})
    assert span is telemetry.OFF and span is telemetry.span("other")
    assert telemetry.attached({"traceparent": TRACEPARENT}) is telemetry.OFF
    with span as entered:
        assert not entered.recording
        entered.set("k", "v")
        entered.update({"k": 1})
    assert telemetry.carrier() == {}


def test_off_nothing_of_opentelemetry_is_imported():
    code = ("import sys; from naosd import telemetry\n"
            "with telemetry.span('x'), telemetry.attached({'traceparent': 'y'}): pass\n"
            "telemetry.carrier()\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("bad", [
    "nonsense", TRACEPARENT.upper(), TRACEPARENT[:-3], TRACEPARENT + "-x",
    "01" + TRACEPARENT[2:],  # another version
    f"00-{'0' * 32}-00f067aa0ba902b7-01", f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01",
    7, None, b"00-",
])
def test_a_malformed_traceparent_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="'traceparent' must be a W3C traceparent"):
        telemetry.check_traceparent(bad, "'traceparent'")


def test_a_traceparent_is_accepted_as_is():
    assert telemetry.check_traceparent(TRACEPARENT, "x") == TRACEPARENT


def test_telemetry_settings_are_off_by_default_and_the_endpoint_gets_its_path():
    c = cfg()
    assert (c.telemetry_enabled, c.telemetry_otlp_endpoint, c.telemetry_service_name) == (
        False, "", "naosd")
    on = cfg(NAOS_TELEMETRY_ENABLED="true", NAOS_TELEMETRY_OTLP_ENDPOINT="http://h:4318/")
    assert on.telemetry_enabled and on.telemetry_otlp_endpoint == "http://h:4318/v1/traces"
    full = cfg(NAOS_TELEMETRY_OTLP_ENDPOINT="https://h/otlp/v1/traces")
    assert full.telemetry_otlp_endpoint == "https://h/otlp/v1/traces"


@pytest.mark.parametrize("bad", ["h:4318", "ftp://h", "http://", "http://h/x?y=1"])
def test_a_bad_endpoint_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"NAOS_TELEMETRY_OTLP_ENDPOINT: "
                                          r"telemetry\.otlp_endpoint: expected an http"):
        cfg(NAOS_TELEMETRY_OTLP_ENDPOINT=bad)


def test_start_without_the_extra_says_how_to_install_it(monkeypatch):
    # What an install without the otel extra sees: the module cannot be imported.
    monkeypatch.setitem(sys.modules, "naosd.telemetry.otel", None)
    with pytest.raises(ConfigError, match=r"pip install 'naos\[otel\]'"):
        telemetry.start(telemetry.Settings("", "naosd", {}))
    assert not telemetry.enabled()
