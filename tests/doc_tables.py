"""The generated tables of docs/protocol.md: the error codes (from
``naosd.errors.ERRORS_BY_CODE``) and the methods (from the ``methods``
result: kind, the role a connection needs, parameters; the last column,
what each method returns, is written by hand and kept).
tests/test_protocol_doc.py checks that the doc holds exactly these;

    python tests/doc_tables.py

rewrites them from this checkout.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from naosd.errors import ERRORS_BY_CODE, meaning

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BEGIN = "<!-- generated: {} (python tests/doc_tables.py) -->"
_END = "<!-- end generated: {} -->"
_ROW = re.compile(r"^\| `(?P<name>[a-z_.]+)` \|.*\| (?P<notes>[^|]*) \|$")


def section(doc: str, name: str) -> str:
    begin, end = _BEGIN.format(name), _END.format(name)
    if begin not in doc or end not in doc:
        raise AssertionError(f"docs/protocol.md has no generated {name!r} section")
    return doc.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def replace_section(doc: str, name: str, body: str) -> str:
    begin, end = _BEGIN.format(name), _END.format(name)
    head, rest = doc.split(begin, 1)
    return f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"


def errors_table() -> str:
    rows = ["| code | meaning | naosctl exit |", "|---|---|---|"]
    rows += [f"| `{code}` | {_cell(meaning(cls))} | {cls.exit_code} |"
             for code, cls in ERRORS_BY_CODE.items()]
    return "\n".join(rows)


def notes_of(doc: str) -> dict[str, str]:
    """The hand-written last column of the method table, by method."""
    out = {}
    for line in section(doc, "methods").splitlines():
        match = _ROW.match(line)
        if match:
            out[match["name"]] = match["notes"]
    return out


def methods_table(methods: list[dict[str, Any]], notes: dict[str, str]) -> str:
    rows = ["| method | kind | role | params | result and notes |", "|---|---|---|---|---|"]
    for m in methods:
        params = ", ".join(_param(name, p) for name, p in m["params"].items()) or "none"
        kind = "stream" if m["stream"] else "unary"
        rows.append(f"| `{m['name']}` | {kind} | {m['role']} | {params} | "
                    f"{notes.get(m['name'], 'TODO')} |")
    return "\n".join(rows)


def _param(name: str, p: dict[str, Any]) -> str:
    text = f"`{name}` {p['type'].replace('|', ' or ')}"
    if not p["required"]:
        text += f" = {_value(p['default'])}"
    if p.get("choices"):
        text += f" ({', '.join(p['choices'])})"
    return text


def _value(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bytes):
        return "empty bin" if not value else f"{len(value)} bytes"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def local_methods() -> list[dict[str, Any]]:
    """The ``methods`` result of this checkout, without a daemon."""
    import naosd.control.agents
    import naosd.control.broker
    import naosd.control.cluster
    import naosd.control.llm
    import naosd.control.orchestration
    import naosd.control.tools
    import naosd.control.trust
    import naosd.control.wasm
    import naosd.mcp.methods  # noqa: F401 - each registers its methods
    from naosd.control.api import list_methods

    result: list[dict[str, Any]] = asyncio.run(list_methods(None, {}))  # type: ignore[arg-type]
    return result


def main() -> None:
    doc = DOC.read_text()
    doc = replace_section(doc, "errors", errors_table())
    doc = replace_section(doc, "methods", methods_table(local_methods(), notes_of(doc)))
    DOC.write_text(doc)


if __name__ == "__main__":
    main()
