"""naosctl saga / workflow: define, run, list, cancel and repair durable runs;
naosctl approve / reject: a person's decision on a step of kind approval.

Exit codes: ``run``, ``resume`` 0 only when the run completed (1 otherwise,
also when it awaits approval: the line says so); ``cancel`` 0 when the run
ends cancelled (``--wait 0``: once the cancel is accepted); ``approve`` and
``reject`` 0 once the decision is recorded; listing and showing 0; errors
by their code (2 bad input, 4 not found, 1 a conflict such as cancelling a
finished run, 7 naosd not running)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from naosctl import render
from naosctl.agent_commands import read_input
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx
from naosd.errors import RequestTimeout

GOOD = ("completed",)
AWAITING = "awaiting_approval"
FINAL = ("completed", "compensated", "compensation_failed", "failed", "cancelled")
SETTLED = (*FINAL, AWAITING)  # nothing happens until a person decides: waits end
TASK_FINAL = ("completed", "failed", "cancelled")


def _show(result: Any, as_json: bool, text: str) -> None:
    click.echo(render.to_json(result) if as_json else text)


def run_line(r: dict[str, Any]) -> str:
    steps = " ".join(f"{s['name']}={s['status']}" for s in r["steps"])
    err = f"  ({r['error']})" if r.get("error") else ""
    note = f"  resolved: {r['resolution']}" if r.get("resolution") else ""
    return f"{r['run_id']}  {r['name']}  {r['status']}  {steps}{err}{note}{_awaits(r)}"


def _awaits(r: dict[str, Any]) -> str:
    waiting = r.get("awaiting")
    if not waiting:
        return ""
    escalated = ", escalated" if waiting["escalated"] else ""
    return (f"  awaiting approval of {waiting['step']} until {waiting['due']} "
            f"(then {waiting['on_timeout']}{escalated}): naosctl approve|reject {r['run_id']}")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def timeline_lines(r: dict[str, Any]) -> list[str]:
    lines = [run_line(r)]
    for t in r["timeline"]:
        d = {k: v for k, v in t["detail"].items() if k not in ("run_id", "saga", "workflow",
                                                              "step")}
        extra = " ".join(f"{k}={v if isinstance(v, str) else _compact(v)}"
                         for k, v in d.items())
        lines.append(f"  {t['ts']}  {t['type']:<34} {t['step'] or '':<12} {extra}")
    lines.extend(f"  output {s['name']}: {_compact(s['output'])}"
                 for s in r["steps"] if s["output"] is not None)
    return lines


def _waited(c: Ctx, call: Any, wait: float, final: tuple[str, ...],
            least: float = 0.1) -> dict[str, Any]:
    """``call(seconds)`` until its result's status is final or ``wait`` is
    over; each call waits well within this client's own timeout."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        result: dict[str, Any] = call(max(least, min(left, c.timeout / 2)))
        if result["status"] in final or time.monotonic() >= deadline:
            return result
        if not result.get("live", True):
            time.sleep(0.2)  # not being run right now (naosd starting): do not spin


def _wait(c: Ctx, kind: str, run_id: str, wait: float) -> dict[str, Any]:
    return _waited(c, lambda s: c.client.call(f"{kind}.wait", run=run_id, timeout=s),
                   wait, SETTLED)


def _task(c: Ctx, name: str, task_id: str, wait: float) -> dict[str, Any]:
    return _waited(c, lambda s: c.client.call("pool.task", name=name, task=task_id, wait=s),
                   wait, TASK_FINAL, least=0.0)


def _finish(result: dict[str, Any], as_json: bool) -> None:
    _show(result, as_json, run_line(result))
    if result["status"] not in GOOD:
        raise SystemExit(1)


def _run_group(kind: str) -> Any:
    def run_cmd(c: Ctx, name: str, input_: str | None, wait: float, no_wait: bool,
                as_json: bool) -> None:
        started = c.client.call(f"{kind}.run", name=name, input=read_input(input_))
        if no_wait:
            _show(started, as_json, started["run_id"])
            return
        if not as_json:
            click.echo(started["run_id"])
        _finish(_wait(c, kind, started["run_id"], wait), as_json)

    def status_cmd(c: Ctx, run: str | None, name: str | None, as_json: bool) -> None:
        if run is None:
            rows = c.client.call(f"{kind}.runs", name=name)
            _show(rows, as_json, "\n".join(run_line(r) for r in rows) or f"no {kind} runs")
            return
        result = c.client.call(f"{kind}.status", run=run)
        _show(result, as_json, run_line(result))

    def history_cmd(c: Ctx, run: str, as_json: bool) -> None:
        result = c.client.call(f"{kind}.history", run=run)
        _show(result, as_json, "\n".join(timeline_lines(result)))

    def resume_cmd(c: Ctx, run: str, wait: float, as_json: bool) -> None:
        c.client.call(f"{kind}.resume", run=run)
        _finish(_wait(c, kind, run, wait), as_json)

    return {"run": run_cmd, "status": status_cmd, "history": history_cmd,
            "resume": resume_cmd, **_control_group(kind)}


def _control_group(kind: str) -> dict[str, Any]:
    def runs_cmd(c: Ctx, status: str | None, name: str | None, since: str | None, limit: int,
                 as_json: bool) -> None:
        rows = c.client.call(f"{kind}.runs", status=status, name=name, since=since,
                             limit=limit)
        _show(rows, as_json, "\n".join(run_line(r) for r in rows) or f"no {kind} runs")

    def cancel_cmd(c: Ctx, run: str, wait: float, as_json: bool) -> None:
        result = c.client.call(f"{kind}.cancel", run=run)
        if wait <= 0:  # accepted: a saga may still be compensating
            _show(result, as_json, run_line(result))
            return
        if result["status"] not in FINAL:  # a saga compensates first
            result = _wait(c, kind, run, wait)
        _show(result, as_json, run_line(result))
        if result["status"] != "cancelled":
            raise SystemExit(1)

    return {"runs": runs_cmd, "cancel": cancel_cmd}


def _register(group: Any, kind: str) -> None:
    cmds = _run_group(kind)
    wait_opt = click.option("--wait", type=float, default=300.0, show_default=True,
                            help="seconds to wait for the outcome")
    def cmd(what: str) -> Any:
        return json_option(pass_ctx(handle_errors()(cmds[what])))

    group.command("run", help=f"Run {kind} NAME: print the run id, then the outcome "
                              "(or that it awaits approval).")(
        click.argument("name")(click.option("--input", "input_", metavar="JSON|FILE|-")(
            wait_opt(click.option("--no-wait", is_flag=True, help="print the run id only")(
                cmd("run"))))))
    group.command("status", help=f"One {kind} run, or the list of runs.")(
        click.argument("run", required=False)(click.option("--name", help=f"only this {kind}")(
            cmd("status"))))
    group.command("history", help="A run's step timeline with times and outputs.")(
        click.argument("run")(cmd("history")))
    group.command("resume", help="Carry on a run (a failed workflow: from its failed step).")(
        click.argument("run")(wait_opt(cmd("resume"))))
    group.command("runs", help=f"{kind.capitalize()} runs, newest first, narrowed by status, "
                               "name and since.")(
        click.option("--status", help="e.g. running, awaiting_approval, cancelled")(
            click.option("--name", help=f"only runs of this {kind}")(
                click.option("--since", help="15m, 2h, 1d or an ISO-8601 time")(
                    click.option("--limit", type=click.IntRange(1, 10_000), default=100,
                                 show_default=True)(cmd("runs"))))))
    undo = ": its completed steps are compensated first" if kind == "saga" else ""
    group.command("cancel", help=f"Cancel a pending, running or awaiting RUN{undo}; "
                                 "exit 0 once it is cancelled.")(
        click.argument("run")(click.option(
            "--wait", type=float, default=300.0, show_default=True,
            help="seconds to wait for it to end (0: do not wait)")(cmd("cancel"))))


# -- saga ---------------------------------------------------------------------------


@cli.group()
def saga() -> None:
    """Durable sagas: steps with compensations, recovered after a crash."""


@saga.command("create")
@click.argument("name")
@click.option("--timeout", type=float, default=3600.0, show_default=True,
              help="seconds for the whole saga")
@click.option("--step-timeout", type=float, default=60.0, show_default=True)
@click.option("--recovery", type=click.Choice(["forward", "compensate"]), default="forward",
              show_default=True, help="after a crash: carry on, or roll back")
@click.option("--compensation-attempts", type=click.IntRange(1, 100), default=3,
              show_default=True)
@click.option("--compensation-delay", type=float, default=1.0, show_default=True,
              help="seconds before the first compensation retry (doubling)")
@click.option("--compensate-in-doubt/--no-compensate-in-doubt", default=True,
              show_default=True,
              help="compensate a failed step that timed out (it may have taken effect)")
@json_option
@pass_ctx
@handle_errors()
def saga_create(c: Ctx, name: str, timeout: float, step_timeout: float, recovery: str,
                compensation_attempts: int, compensation_delay: float,
                compensate_in_doubt: bool, as_json: bool) -> None:
    """Define saga NAME (then add steps)."""
    result = c.client.call("saga.create", name=name, timeout=timeout,
                           step_timeout=step_timeout, recovery=recovery,
                           compensation_attempts=compensation_attempts,
                           compensation_delay=compensation_delay,
                           compensate_in_doubt=compensate_in_doubt)
    _show(result, as_json, f"saga {name} created")


def approval_options(fn: Any) -> Any:
    """--approval and --on-timeout: a step a person decides (approve / reject)."""
    fn = click.option("--on-timeout", type=click.Choice(["reject", "escalate"]),
                      help="an approval nobody decided in time: reject it (default) or "
                           "escalate (an alert, then as long again, then reject)")(fn)
    return click.option("--approval", is_flag=True,
                        help="a person decides this step: naosctl approve|reject RUN "
                             "(no --agent; --timeout is the wait, default a day)")(fn)


@saga.command("add-step")
@click.argument("saga_name", metavar="SAGA")
@click.argument("step")
@click.option("--agent", help="the agent that runs this step (not with --approval)")
@click.option("--compensate", help="the agent that undoes this step")
@click.option("--timeout", type=float, help="seconds (default: the saga's --step-timeout)")
@click.option("--attempts", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--retry-delay", type=float, default=1.0, show_default=True)
@click.option("--backoff", type=float, default=2.0, show_default=True)
@click.option("--max-delay", type=float, default=30.0, show_default=True)
@click.option("--non-retryable", "non_retryable", multiple=True,
              help="an error code that fails the step at once (repeatable)")
@approval_options
@json_option
@pass_ctx
@handle_errors()
def saga_add_step(c: Ctx, saga_name: str, step: str, agent: str | None,
                  compensate: str | None, timeout: float | None, attempts: int,
                  retry_delay: float, backoff: float, max_delay: float,
                  non_retryable: tuple[str, ...], approval: bool, on_timeout: str | None,
                  as_json: bool) -> None:
    """Append STEP (run by --agent, or decided by a person: --approval) to SAGA."""
    result = c.client.call("saga.add_step", saga=saga_name, step=step, agent=agent,
                           compensate=compensate, timeout=timeout, attempts=attempts,
                           retry_delay=retry_delay, backoff=backoff, max_delay=max_delay,
                           non_retryable=list(non_retryable), approval=approval,
                           on_timeout=on_timeout)
    _show(result, as_json, f"saga {saga_name}: step {step} added "
                           f"({len(result['steps'])} steps)")


@saga.command("list")
@json_option
@pass_ctx
@handle_errors()
def saga_list(c: Ctx, as_json: bool) -> None:
    """Every saga definition."""
    rows = c.client.call("saga.list")
    _show(rows, as_json, "\n".join(
        f"{r['name']}  " + " -> ".join(s["name"] for s in r["steps"]) for r in rows))


def _delete_command(group: click.Group, kind: str) -> None:
    @group.command("delete", help=f"Forget {kind} NAME (refused while one of its runs is "
                                  "unfinished; finished runs stay).")
    @click.argument("name")
    @json_option
    @pass_ctx
    @handle_errors()
    def command(c: Ctx, name: str, as_json: bool) -> None:
        result = c.client.call(f"{kind}.delete", name=name)
        _show(result, as_json, f"{kind} {name}: deleted")


_delete_command(saga, "saga")


@saga.command("retry-compensation")
@click.argument("run")
@click.option("--wait", type=float, default=300.0, show_default=True)
@json_option
@pass_ctx
@handle_errors()
def saga_retry_compensation(c: Ctx, run: str, wait: float, as_json: bool) -> None:
    """Retry the failed compensations of RUN."""
    c.client.call("saga.retry_compensation", run=run)
    result = _wait(c, "saga", run, wait)
    _show(result, as_json, run_line(result))
    if result["status"] != "compensated":
        raise SystemExit(1)


@saga.command("resolve")
@click.argument("run")
@click.option("--note", required=True, help="what was done by hand")
@json_option
@pass_ctx
@handle_errors()
def saga_resolve(c: Ctx, run: str, note: str, as_json: bool) -> None:
    """Close a compensation_failed RUN by hand, with a note."""
    result = c.client.call("saga.resolve", run=run, note=note)
    _show(result, as_json, run_line(result))


_register(saga, "saga")


# -- workflow -----------------------------------------------------------------------


@cli.group()
def workflow() -> None:
    """Durable sequential workflows: each step's output is the next one's input."""


@workflow.command("create")
@click.argument("name")
@click.option("--on-error", type=click.Choice(["stop", "skip", "retry"]), default="stop",
              show_default=True)
@click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True)
@click.option("--retry-delay", type=float, default=0.0, show_default=True)
@click.option("--step-timeout", type=float, default=60.0, show_default=True)
@json_option
@pass_ctx
@handle_errors()
def workflow_create(c: Ctx, name: str, on_error: str, retries: int, retry_delay: float,
                    step_timeout: float, as_json: bool) -> None:
    """Define workflow NAME (then add steps)."""
    result = c.client.call("workflow.create", name=name, on_error=on_error, retries=retries,
                           retry_delay=retry_delay, step_timeout=step_timeout)
    _show(result, as_json, f"workflow {name} created")


@workflow.command("add-step")
@click.argument("workflow_name", metavar="WORKFLOW")
@click.argument("step")
@click.option("--agent", help="the agent that runs this step (not with --approval)")
@click.option("--timeout", type=float)
@click.option("--on-error", type=click.Choice(["stop", "skip", "retry"]))
@click.option("--retries", type=click.IntRange(0, 100))
@click.option("--retry-delay", type=float)
@approval_options
@json_option
@pass_ctx
@handle_errors()
def workflow_add_step(c: Ctx, workflow_name: str, step: str, agent: str | None,
                      timeout: float | None, on_error: str | None, retries: int | None,
                      retry_delay: float | None, approval: bool, on_timeout: str | None,
                      as_json: bool) -> None:
    """Append STEP (run by --agent, or decided by a person: --approval) to WORKFLOW."""
    result = c.client.call("workflow.add_step", workflow=workflow_name, step=step, agent=agent,
                           timeout=timeout, on_error=on_error, retries=retries,
                           retry_delay=retry_delay, approval=approval, on_timeout=on_timeout)
    _show(result, as_json, f"workflow {workflow_name}: step {step} added")


_register(workflow, "workflow")


# -- approve / reject -----------------------------------------------------------------


def _decide(c: Ctx, verb: str, run: str, note: str, step: str | None, wait: float,
            as_json: bool) -> None:
    result = c.client.call(verb, run=run, note=note, step=step)
    if wait > 0 and result["status"] not in SETTLED:
        result = _wait(c, result["kind"], run, wait)
    _show(result, as_json, run_line(result))


def _decision_command(verb: str, help_: str) -> None:
    @cli.command(verb, help=help_)
    @click.argument("run")
    @click.option("--note", default="", help="why (kept with the run and in the audit log)")
    @click.option("--step", help="only if the run awaits this step")
    @click.option("--wait", type=float, default=0.0,
                  help="seconds to wait for the run to end or await the next approval")
    @json_option
    @pass_ctx
    @handle_errors()
    def decide(c: Ctx, run: str, note: str, step: str | None, wait: float,
               as_json: bool) -> None:
        _decide(c, verb, run, note, step, wait, as_json)


_decision_command("approve", "Approve the step RUN (a saga or workflow run) awaits; "
                             "exit 0 once recorded.")
_decision_command("reject", "Reject the step RUN awaits: a saga compensates, a workflow "
                            "stops; exit 0 once recorded.")


# -- pool ---------------------------------------------------------------------------


@workflow.command("list")
@json_option
@pass_ctx
@handle_errors()
def workflow_list(c: Ctx, as_json: bool) -> None:
    """Every workflow definition."""
    rows = c.client.call("workflow.list")
    _show(rows, as_json, "\n".join(
        f"{r['name']}  " + " -> ".join(s["name"] for s in r["steps"]) for r in rows)
        or "no workflows")


_delete_command(workflow, "workflow")


@cli.group()
def pool() -> None:
    """Agent pools: fan-out with a merge, or a task queue over the members."""


@pool.command("create")
@click.argument("name")
@click.option("--agents", help="members, comma-separated")
@click.option("--agent", help="clone this agent --size times")
@click.option("--size", type=click.IntRange(1, 256))
@click.option("--merge", default="all", show_default=True,
              help="all, first, majority, quorum:K or reducer")
@click.option("--reducer", help="with --merge reducer: the agent that merges the results")
@click.option("--pick", type=click.Choice(["round-robin", "least-busy"]), default="round-robin",
              show_default=True, help="queue mode: how a task's member is chosen")
@click.option("--concurrency", type=click.IntRange(0, 1024), default=0,
              help="members asked at once (0: all)")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@json_option
@pass_ctx
@handle_errors()
def pool_create(c: Ctx, name: str, agents: str | None, agent: str | None, size: int | None,
                merge: str, reducer: str | None, pick: str, concurrency: int, timeout: float,
                as_json: bool) -> None:
    """Define pool NAME."""
    members = [a.strip() for a in agents.split(",") if a.strip()] if agents else None
    result = c.client.call("pool.create", name=name, agents=members, agent=agent, size=size,
                           merge=merge, reducer=reducer, pick=pick, concurrency=concurrency,
                           timeout=timeout)
    _show(result, as_json, f"pool {name} created ({result['size']} members, {merge})")


@pool.command("run")
@click.argument("name")
@click.option("--input", "input_", metavar="JSON|FILE|-")
@click.option("--concurrency", type=click.IntRange(1, 1024))
@click.option("--timeout", type=float)
@json_option
@pass_ctx
@handle_errors()
def pool_run(c: Ctx, name: str, input_: str | None, concurrency: int | None,
             timeout: float | None, as_json: bool) -> None:
    """Send one input to every member of NAME and print the merged result."""
    result = c.client.call("pool.run", name=name, input=read_input(input_),
                           concurrency=concurrency, timeout=timeout)
    failed = f"  failed: {', '.join(result['failed'])}" if result["failed"] else ""
    _show(result, as_json, f"{result['status']}: {render.to_json(result['value'])}{failed}")
    if result["status"] == "failed":
        raise SystemExit(1)


@pool.command("submit")
@click.argument("name")
@click.option("--input", "input_", metavar="JSON|FILE|-")
@click.option("--wait", type=float, default=0.0, help="seconds to wait for the result")
@json_option
@pass_ctx
@handle_errors()
def pool_submit(c: Ctx, name: str, input_: str | None, wait: float, as_json: bool) -> None:
    """Queue a task on NAME; print its id (with --wait, its result)."""
    task = c.client.call("pool.submit", name=name, input=read_input(input_))
    if wait > 0:
        task = _task(c, name, task["task_id"], wait)
    _show(task, as_json, task["task_id"] if wait <= 0 else render.to_json(task))


@pool.command("task")
@click.argument("name")
@click.argument("task_id")
@click.option("--wait", type=float, default=0.0)
@json_option
@pass_ctx
@handle_errors()
def pool_task(c: Ctx, name: str, task_id: str, wait: float, as_json: bool) -> None:
    """A queued task's state and output."""
    task = _task(c, name, task_id, wait)
    _show(task, as_json, render.to_json(task))


def pool_line(s: dict[str, Any]) -> str:
    members = " ".join(f"{m['name']}({m['busy']})" for m in s["members"])
    return (f"{s['name']}  {s['merge']}  queued={s['queued']} running={s['running']} "
            f"done={s['completed']} failed={s['failed']} cancelled={s.get('cancelled', 0)} "
            f"{s['throughput_per_s']}/s  {members}")


@pool.command("status")
@click.argument("name", required=False)
@json_option
@pass_ctx
@handle_errors()
def pool_status(c: Ctx, name: str | None, as_json: bool) -> None:
    """Members and their load, queue depth, throughput."""
    result = c.client.call("pool.status", name=name)
    rows = result if isinstance(result, list) else [result]
    _show(result, as_json, "\n".join(pool_line(r) for r in rows) or "no pools")


@pool.command("list")
@json_option
@pass_ctx
@handle_errors()
def pool_list(c: Ctx, as_json: bool) -> None:
    """Every pool with its members, load and counts."""
    rows = c.client.call("pool.status", name=None)
    _show(rows, as_json, "\n".join(pool_line(r) for r in rows) or "no pools")


@pool.command("delete")
@click.argument("name")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="seconds to wait for each clone to stop")
@json_option
@pass_ctx
@handle_errors()
def pool_delete(c: Ctx, name: str, timeout: float, as_json: bool) -> None:
    """Forget pool NAME and the clones it made (refused while tasks are queued or running)."""
    result = c.client.call("pool.delete", name=name, timeout=timeout)
    clones = f" (and its clones {', '.join(result['clones_deleted'])})" \
        if result["clones_deleted"] else ""
    _show(result, as_json, f"pool {name}: deleted{clones}")


@pool.command("scale")
@click.argument("name")
@click.argument("size", type=click.IntRange(1, 256))
@json_option
@pass_ctx
@handle_errors()
def pool_scale(c: Ctx, name: str, size: int, as_json: bool) -> None:
    """Change the number of clones of NAME (while tasks run)."""
    _show_status(c.client.call("pool.scale", name=name, size=size), as_json)


@pool.command("drain")
@click.argument("name")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@json_option
@pass_ctx
@handle_errors()
def pool_drain(c: Ctx, name: str, timeout: float, as_json: bool) -> None:
    """Stop taking tasks on NAME and wait for the queue to empty."""
    deadline = time.monotonic() + timeout
    while True:  # each call waits well within this client's own timeout
        left = max(0.1, min(deadline - time.monotonic(), c.timeout / 2))
        try:
            status = c.client.call("pool.drain", name=name, timeout=left)
        except RequestTimeout:
            if time.monotonic() >= deadline:
                raise
            continue
        _show_status(status, as_json)
        return


def _show_status(result: dict[str, Any], as_json: bool) -> None:
    _show(result, as_json, pool_line(result))


@pool.command("run-status")
@click.argument("run_id")
@json_option
@pass_ctx
@handle_errors()
def pool_run_status(c: Ctx, run_id: str, as_json: bool) -> None:
    """A fan-out's outcome by run id (also one that naosd's stop cut short)."""
    result = c.client.call("pool.run_status", run=run_id)
    _show(result, as_json, f"{result['run_id']}  {result['pool']}  {result['status']}  "
                           f"{result.get('reason') or ''}".rstrip())


@pool.command("cancel")
@click.argument("name")
@click.argument("task_id")
@json_option
@pass_ctx
@handle_errors()
def pool_cancel(c: Ctx, name: str, task_id: str, as_json: bool) -> None:
    """Cancel a queued task of NAME (not one already sent to a member)."""
    task = c.client.call("pool.cancel", name=name, task=task_id)
    _show(task, as_json, f"{task['task_id']} cancelled")
