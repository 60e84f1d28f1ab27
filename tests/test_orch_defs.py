"""Saga, workflow and pool definitions and their naos.toml sections (pure)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from actors.domain import orch_defs as defs
from actors.domain.project import parse
from naosd.errors import ConfigError, Conflict, InvalidRequest

TOML = '''
[agents.inventory]
template = "echo"
[agents.release]
template = "echo"
[agents.fetcher]
template = "echo"

[sagas.order]
timeout = 300
recovery = "compensate"

[[sagas.order.steps]]
name = "reserve"
agent = "inventory"
compensate = "release"
attempts = 3
non_retryable = ["declined"]

[[sagas.order.steps]]
name = "charge"
agent = "fetcher"
timeout = 5

[workflows.etl]
on_error = "skip"
retries = 2
steps = [{ name = "fetch", agent = "fetcher", on_error = "retry", retries = 5 }]

[pools.summarize]
agent = "fetcher"
size = 4
merge = "quorum:2"
'''


def load(text: str) -> dict:
    return tomllib.loads(text)


def test_project_sections_become_runnable_definitions():
    project = parse(load(TOML), Path("/"), origin="naos.toml")
    saga = project.orchestration["sagas"][0]
    spec = defs.saga_spec(saga)
    assert spec.recovery == "compensate" and spec.timeout_s == 300
    assert spec.step("reserve").retry.attempts == 3
    assert spec.step("reserve").retry.non_retryable == {"declined"}
    assert spec.step("charge").timeout_s == 5 and spec.step("charge").compensate_agent is None
    wf = defs.workflow_spec(project.orchestration["workflows"][0])
    assert wf.policy("fetch") == ("retry", wf.steps[0].retry)
    assert wf.steps[0].retry is not None and wf.steps[0].retry.attempts == 6  # 5 more tries
    pool = project.orchestration["pools"][0]
    assert pool["size"] == 4 and pool["merge"] == "quorum:2"
    assert defs.pool_agents(pool) == ["fetcher"]


@pytest.mark.parametrize(("edit", "message"), [
    (("merge = \"quorum:2\"", "merge = \"most\""), "pools.summarize: unknown merge strategy"),
    (("size = 4", "size = 0"), "pools.summarize: a pool of clones needs a size"),
    (("agent = \"fetcher\"\nsize", "agent = \"ghost\"\nsize"),
     "pools.summarize: no agent named 'ghost' in this file"),
    (("compensate = \"release\"", "compensate = \"nobody\""),
     "sagas.order: no agent named 'nobody'"),
    (("timeout = 300", "timeout = -1"), "sagas.order: timeout must be > 0"),
    (("recovery = \"compensate\"", "recovery = \"later\""), "sagas.order: recovery must be"),
    (("attempts = 3", "attempts = 0"), "sagas.order: attempts must be >= 1"),
    (("timeout = 5\n", "timeout = 5\ncolour = 1\n"), "sagas.order: steps[1].colour: unknown"),
    (("on_error = \"skip\"", "on_error = \"panic\""), "workflows.etl: on_error must be"),
    (("retries = 5 }", "retries = -1 }"), "workflows.etl: retry count must be"),
    (("[pools.summarize]", "[pools.summarize]\ncolour = 1"), "pools.summarize: colour: unknown"),
])
def test_bad_sections_name_the_key(edit: tuple[str, str], message: str):
    text = TOML.replace(*edit)
    assert text != TOML
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(load(text), Path("/"), origin="naos.toml")


def test_duplicate_steps_and_empty_sagas():
    draft = defs.saga_draft("s")
    with pytest.raises(InvalidRequest, match="at least one step"):
        defs.saga_spec(draft)
    draft = defs.saga_add_step(draft, "a", "x")
    assert draft["steps"][0]["timeout_s"] == 60.0  # the saga's step timeout
    with pytest.raises(Conflict, match="already has a step"):
        defs.saga_add_step(draft, "a", "y")
    with pytest.raises(InvalidRequest, match="invalid step name"):
        defs.saga_add_step(draft, "Bad Name", "y")
    with pytest.raises(InvalidRequest, match="non_retryable"):
        defs.saga_add_step(draft, "b", "y", non_retryable=[1])
    with pytest.raises(ConfigError, match=r"sagas\.s: steps: expected a non-empty list"):
        parse(load('[sagas.s]\nsteps = []\n'), Path("/"))
    wf = defs.workflow_add_step(defs.workflow_draft("w", retries=2, retry_delay=1), "a", "x",
                                retry_delay=3)
    assert wf["steps"][0]["retry"] == {"count": 2, "delay_s": 3.0}  # count inherited
    with pytest.raises(InvalidRequest, match="seconds"):
        defs.seconds(float("nan"), "t")
    # a pool's timeout is bounded by a day, not by a daemon's request timeout
    assert defs.pool_def("p", agents=["a"], timeout=3600)["timeout_s"] == 3600.0
    with pytest.raises(InvalidRequest, match="at most 86400"):
        defs.pool_def("p", agents=["a"], timeout=86401)
    with pytest.raises(InvalidRequest, match="twice"):
        defs.pool_def("p", agents=["a", "a"])
    with pytest.raises(InvalidRequest, match="either agents"):
        defs.pool_def("p", agents=["a"], agent="b", size=2)
    assert defs.pool_def("p", agents=["a", "b"], merge="reducer", reducer="r")["size"] == 2
    assert defs.pool_agents(defs.pool_def("p", agents=["a"], merge="reducer",
                                          reducer="r")) == ["a", "r"]


def test_unknown_section_lists_the_known_ones():
    with pytest.raises(ConfigError, match="pools, sagas, supervisors, workflows"):
        parse(load("[jobs.x]\n"), Path("/"))


def test_compensate_in_doubt_defaults_on_and_is_checked():
    draft = defs.saga_add_step(defs.saga_draft("s"), "a", "x")
    assert defs.saga_spec(draft).compensate_in_doubt is True
    off = defs.saga_add_step(defs.saga_draft("s", compensate_in_doubt=False), "a", "x")
    assert defs.saga_spec(off).compensate_in_doubt is False
    older = {k: v for k, v in draft.items() if k != "compensate_in_doubt"}  # stored before
    assert defs.saga_spec(older).compensate_in_doubt is True
    with pytest.raises(InvalidRequest, match="compensate_in_doubt must be true or false"):
        defs.saga_draft("s", compensate_in_doubt="no")
    project = parse(load('[agents.x]\ntemplate = "echo"\n[sagas.s]\ncompensate_in_doubt = false\n'
                         'steps = [{ name = "a", agent = "x" }]\n'), Path("/"))
    assert project.orchestration["sagas"][0]["compensate_in_doubt"] is False
    with pytest.raises(ConfigError, match="compensate_in_doubt"):
        parse(load('[agents.x]\ntemplate = "echo"\n[sagas.s]\ncompensate_in_doubt = 1\n'
                   'steps = [{ name = "a", agent = "x" }]\n'), Path("/"))


APPROVALS = '''
[agents.x]
template = "echo"

[sagas.order]
steps = [{ name = "reserve", agent = "x", compensate = "x" },
         { name = "approve", approval = true, timeout = 172800, on_timeout = "escalate" },
         { name = "charge", agent = "x" }]

[workflows.etl]
steps = [{ name = "fetch", agent = "x" }, { name = "review", approval = true }]
'''


def test_approval_steps_from_a_project_file():
    project = parse(load(APPROVALS), Path("/"), origin="naos.toml")
    saga = defs.saga_spec(project.orchestration["sagas"][0])
    approve = saga.step("approve")
    assert (approve.kind, approve.agent, approve.timeout_s, approve.on_timeout) == \
        ("approval", "", 172800.0, "escalate")  # two days: no daemon cap applies
    review = defs.workflow_spec(project.orchestration["workflows"][0]).step("review")
    assert (review.kind, review.timeout_s, review.on_timeout) == ("approval", 86400.0, "reject")


@pytest.mark.parametrize(("edit", "message"), [
    (("approval = true, timeout", "approval = true, agent = \"x\", timeout"),
     "sagas.order: steps[1].agent: unknown key"),
    (("on_timeout = \"escalate\"", "on_timeout = \"ignore\""),
     "on_timeout must be reject or escalate"),
    (("timeout = 172800", "timeout = 40000000"), "at most 31622400 seconds"),
    (("approval = true }", "approval = \"yes\" }"), "workflows.etl: steps[1].approval: expected"),
    (("{ name = \"charge\", agent = \"x\" }", "{ name = \"charge\" }"),
     "steps[2]: needs a name and an agent (or approval = true)"),
    (("{ name = \"charge\", agent = \"x\" }", "{ name = \"charge\", agent = \"x\", "
                                               "on_timeout = \"reject\" }"),
     "steps[2].on_timeout: unknown key"),
])
def test_bad_approval_steps_name_the_key(edit: tuple[str, str], message: str):
    text = APPROVALS.replace(*edit)
    assert text != APPROVALS
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(load(text), Path("/"), origin="naos.toml")


def test_approval_steps_through_the_builders():
    draft = defs.saga_add_step(defs.saga_draft("s"), "ok", None, approval=True)
    assert draft["steps"][0]["kind"] == "approval" and draft["steps"][0]["timeout_s"] == 86400
    with pytest.raises(InvalidRequest, match="names no agent and no compensation"):
        defs.saga_add_step(defs.saga_draft("s"), "ok", "x", approval=True)
    with pytest.raises(InvalidRequest, match="names no agent and no compensation"):
        defs.saga_add_step(defs.saga_draft("s"), "ok", None, compensate="x", approval=True)
    with pytest.raises(Conflict, match="already has a step 'ok'"):
        defs.saga_add_step(draft, "ok", None, approval=True)
    with pytest.raises(InvalidRequest, match="needs an agent"):
        defs.saga_add_step(draft, "b", None)
    with pytest.raises(InvalidRequest, match="on_timeout is for approval steps"):
        defs.saga_add_step(draft, "b", "x", on_timeout="reject")
    wf = defs.workflow_add_step(defs.workflow_draft("w"), "r", None, approval=True,
                                timeout=60, on_timeout="escalate")
    assert defs.workflow_spec(wf).step("r").on_timeout == "escalate"
    with pytest.raises(InvalidRequest, match="retries does not apply"):
        defs.workflow_add_step(defs.workflow_draft("w"), "r", None, approval=True, retries=2)
    with pytest.raises(InvalidRequest, match="needs an agent"):
        defs.workflow_add_step(defs.workflow_draft("w"), "r", None)
