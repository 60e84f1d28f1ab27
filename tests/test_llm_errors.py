"""The LLM and AXIS errors: stable, unique wire codes that naosctl rebuilds."""

from __future__ import annotations

import pytest

import naosd.broker.axis
import naosd.broker.llm.errors as le
from actors.domain import trust
from naosd.errors import NaosError, _all_subclasses, from_wire

CODES = {le.LlmUnavailable: "llm_unavailable", le.LlmRateLimited: "llm_rate_limited",
         le.LlmQuotaExceeded: "llm_quota_exceeded", le.LlmBadResponse: "llm_bad_response",
         le.LlmTimeout: "llm_timeout", le.NoLlm: "llm_not_configured",
         le.LlmStarting: "llm_starting", le.LlmCrashed: "llm_crashed",
         le.AxisUnavailable: "axis_unavailable",
         naosd.broker.axis.AxisUnknownAuid: "axis_unknown_auid", trust.TrustDenied: "trust_denied"}


@pytest.mark.parametrize(("cls", "code"), CODES.items())
def test_codes_are_stable_and_rebuilt_from_the_wire(cls, code):
    assert cls.code == code
    rebuilt = from_wire(code, "why")
    assert type(rebuilt) is cls and rebuilt.message == "why"


def test_no_two_error_classes_share_a_code():
    seen: dict[str, str] = {}
    for cls in _all_subclasses(NaosError):
        if "code" not in vars(cls):
            continue  # inherits its parent's code on purpose (e.g. RemoteError)
        # by name: a module some test imported twice holds copies of its classes
        name = f"{cls.__module__}.{cls.__qualname__}"
        first = seen.setdefault(cls.code, name)
        assert first == name, f"{name} and {first} share {cls.code}"
