"""Text from agents and guests reaches no terminal as a command: the pure
renderers' tables, JSON kept exact, and the terminal guard on a real pty."""

from __future__ import annotations

import io
import json
import os

import pytest

from naosctl import render, terminal

HOSTILE = ("ok\x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J\x1b[H\rfake prompt$ \x9b31m red\x08\x00"
           "\x7f \u202egnp.exe\u2028next")


@pytest.mark.parametrize(("text", "shown"), [
    pytest.param("\x1b]52;c;SGk=\x07", "\\e]52;c;SGk=\\a", id="osc52-clipboard"),
    pytest.param("\x1b[2J\x1b[1;1H", "\\e[2J\\e[1;1H", id="csi"),
    pytest.param("done\rFAKE", "done\\rFAKE", id="carriage-return"),
    pytest.param("a\nb\tc", "a\\nb\\tc", id="newline-tab"),
    pytest.param("\x00\x08\x0b\x0c\x7f", "\\x00\\b\\v\\f\\x7f", id="c0-del"),
    pytest.param("\x9b31m\x9d0;t\x9c", "\\x9b31m\\x9d0;t\\x9c", id="c1"),
    pytest.param("\u202egnp.exe", "\\u202egnp.exe", id="bidi-override"),
    pytest.param("a\u2028b\u2029c", "a\\u2028b\\u2029c", id="line-separators"),
    pytest.param("café 日本 👩\u200d💻 C:\\dir \\e", "café 日本 👩\u200d💻 C:\\dir \\e",
                 id="printable-unchanged"),
])
def test_printable_escapes_every_control_character(text, shown):
    assert render.printable(text) == shown


def test_printable_keeps_lines_when_asked_and_is_idempotent():
    assert render.printable("a\nb\tc\rd", lines=True) == "a\nb\tc\\rd"
    once = render.printable(HOSTILE)
    assert render.printable(once) == once
    assert once.isprintable()


def test_json_stays_exact_and_holds_no_raw_control_character():
    value = {"output": HOSTILE, "nested": [HOSTILE]}
    for text in (render.to_json(value), render.jsonl([value])):
        assert json.loads(text) == value
        assert all(ch.isprintable() or ch in "\n " for ch in text)


@pytest.mark.parametrize("line", [
    pytest.param(lambda: render.log_line({"ts": "t", "agent": "a", "level": "info",
                                          "text": HOSTILE}), id="log"),
    pytest.param(lambda: render.audit_row({"seq": 1, "ts": "t", "actor": "a", "agent": "b",
                                           "type": "agent.run", "detail": {"x": HOSTILE}}),
                 id="audit"),
    pytest.param(lambda: render.agent_row({"name": "a", "state": "failed", "supervisor": "s",
                                           "last_error": HOSTILE}), id="agent"),
    pytest.param(lambda: render.tree({"name": "a", "state": "failed", "last_error": HOSTILE})[0],
                 id="tree"),
])
def test_text_renderers_give_one_printable_line(line):
    text = line()
    assert text.isprintable() and ("\\e]52" in text or "\\u001b]52" in text)


def test_a_terminal_sees_escapes_and_a_file_the_exact_text():
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", encoding="utf-8", closefd=False) as tty:
            guarded = terminal.guard(tty)
            assert isinstance(guarded, terminal.TerminalText)
            guarded.write(HOSTILE + "\n")
            guarded.flush()
            shown = os.read(primary, 4096).decode()
        assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
        assert "\\e]52;c;cm0gLXJmIH4=\\a" in shown
    finally:
        os.close(primary)
        os.close(secondary)
    plain = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    assert terminal.guard(plain) is plain  # not a terminal: left alone
