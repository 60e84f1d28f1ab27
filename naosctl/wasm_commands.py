"""naosctl wasm: run and validate WebAssembly modules in the sandbox."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import click

from naosctl import render
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx


@cli.group()
def wasm() -> None:
    """Run and validate WASI command modules in naosd's sandbox."""


def _read_module(path: str) -> bytes:
    data = Path(path).read_bytes()
    if not data:
        raise click.BadParameter(f"{path} is empty", param_hint="MODULE")
    return data


@wasm.command("run")
@click.argument("module", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_", default="", help="bytes for the guest's stdin; - reads stdin")
@click.option("--fuel", type=click.IntRange(1), help="instruction budget")
@click.option("--memory-mb", type=click.IntRange(1, 65536), help="linear memory cap")
@click.option("--timeout", type=click.FloatRange(min=0.001, max=3600), help="seconds")
@click.option("--grant", "grants", multiple=True, type=click.Choice(["log", "kv_get", "kv_set"]),
              help="host functions the guest may import")
@json_option
@pass_ctx
@handle_errors()
def wasm_run(c: Ctx, module: str, input_: str, fuel: int | None, memory_mb: int | None,
             timeout: float | None, grants: tuple[str, ...], as_json: bool) -> None:
    """Run MODULE; print its stdout (with --json: exit code, fuel, cost, memory, time)."""
    stdin = sys.stdin.buffer.read() if input_ == "-" else input_.encode()
    params: dict[str, Any] = {"module": _read_module(module), "input": stdin,
                              "grants": list(grants)}
    if fuel:
        params["fuel"] = fuel
    if memory_mb:
        params["memory_mb"] = memory_mb
    if timeout:
        params["timeout_ms"] = max(1, int(timeout * 1000))
    result = c.client.call("wasm.run", **params)
    if as_json:
        shown = {**result, "stdout": _text(result["stdout"]), "stderr": _text(result["stderr"])}
        click.echo(render.to_json(shown))
    else:
        _write_output(result["stdout"], sys.stdout)
        _write_output(result["stderr"], sys.stderr)
    if result["exit_code"] != 0:
        if not as_json:
            click.echo(f"naosctl: guest exited with code {result['exit_code']}", err=True)
        sys.exit(1)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _write_output(data: bytes, stream: TextIO) -> None:
    """The guest's bytes, exactly, into a pipe or file; shown through
    render.printable on a terminal."""
    stream.flush()
    if stream.isatty():
        stream.write(render.printable(_text(data), lines=True))
        stream.flush()
    else:
        stream.buffer.write(data)
        stream.buffer.flush()


@wasm.command("validate")
@click.argument("module", type=click.Path(exists=True, dir_okay=False))
@click.option("--grant", "grants", multiple=True, type=click.Choice(["log", "kv_get", "kv_set"]))
@json_option
@pass_ctx
@handle_errors()
def wasm_validate(c: Ctx, module: str, grants: tuple[str, ...], as_json: bool) -> None:
    """Imports, exports, size and a verdict; exit 1 unless it can run."""
    report = c.client.call("wasm.validate", module=_read_module(module), grants=list(grants))
    if as_json:
        click.echo(render.to_json(report))
    else:
        click.echo(render.wasm_report(module, report))
    if not report["ok"]:
        sys.exit(1)
