"""The audit head checkpoint against the real naosd and naosctl (issue 15, 5f).

Someone who can write the state dir deletes the last audit rows and then
deletes, garbles or forges the checkpoint while naosd is stopped. naosd still
starts (the operator must be able to look), but records an alert that makes
``naosctl audit verify`` exit 1 until ``naosctl audit reanchor --yes``; an
exported head kept outside catches a log cut below it even after that.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Naosd, reap, start_naosd

from naosd.storage.audit import Checkpoint
from naosd.storage.checkpoint import encode_checkpoint

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def running(base: Path) -> Iterator[Naosd]:
    """naosd on ``base`` (its state dir survives restarts), stopped afterwards."""
    d = start_naosd(base)
    try:
        yield d
    finally:
        d.stop()
        assert not reap(d)


def cut_log(d: Naosd, keep: int) -> tuple[int, str]:
    """Delete the rows after ``keep`` (naosd stopped); the new last row."""
    con = sqlite3.connect(d.state_dir / "naos.db")
    try:
        with con:
            con.execute("DELETE FROM audit WHERE seq > ?", (keep,))
        seq, digest = con.execute("SELECT seq, hash FROM audit ORDER BY seq DESC").fetchone()
    finally:
        con.close()
    return seq, digest


def some_rows(d: Naosd) -> None:
    for name in ("one", "two"):
        d.ctl("create", name, "--template", "echo", check=True)


def verify(d: Naosd, *args: str) -> tuple[int, dict]:
    out = d.ctl("audit", "verify", "--json", *args)
    return out.returncode, json.loads(out.stdout)


def test_deleted_rows_and_checkpoint_are_reported_until_reanchored(base: Path):
    anchor = base / "anchor.json"
    with running(base) as d:
        some_rows(d)
        exported = d.ctl("audit", "head", "--export", "--json", check=True).stdout
        anchor.write_text(exported)
        assert verify(d, "--anchor", str(anchor))[0] == 0
        keep = json.loads(exported)["seq"] - 2  # below the exported head
    cut_log(d, keep)
    (d.state_dir / "audit.head").unlink()

    with running(base) as d:
        code, result = verify(d)
        assert code == 1 and result["alert_seq"] == keep + 1
        assert "audit.checkpoint_missing" in result["reason"]
        text = d.ctl("audit", "verify")
        assert text.returncode == 1 and "NOT VERIFIED" in text.stdout
        assert "audit.head is missing" in text.stdout
        assert "naosctl audit reanchor --yes" in text.stdout
        assert "recorded as audit row" in d.log()
        refused = d.ctl("audit", "reanchor")
        assert refused.returncode == 1 and "nothing changed" in refused.stderr
        done = d.ctl("audit", "reanchor", "--yes", "--json", check=True)
        row = json.loads(done.stdout)["row"]
        assert row["type"] == "audit.reanchor" and row["detail"]["new"]["seq"] >= keep + 1
        assert verify(d)[0] == 0
        code, result = verify(d, "--anchor", str(anchor))  # the head kept outside
        assert code == 1 and "differs from the anchor" in result["reason"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(lambda path, head: path.write_text("{garbled"), "not JSON",
                     id="garbled"),
        pytest.param(lambda path, head: path.write_bytes(encode_checkpoint(head, None)),
                     "not signed", id="forged-without-the-key"),
        pytest.param(lambda path, head: path.write_bytes(encode_checkpoint(head, b"x" * 32)),
                     "does not verify", id="forged-with-another-key"),
    ],
)
def test_a_garbled_or_forged_checkpoint_is_an_alert(base: Path, damage, reason):
    with running(base) as d:
        some_rows(d)
        last = json.loads(d.ctl("audit", "head", "--json", check=True).stdout)["seq"]
    head = Checkpoint(*cut_log(d, last - 1))
    damage(d.state_dir / "audit.head", head)

    with running(base) as d:
        code, result = verify(d)
        assert code == 1 and "audit.checkpoint_garbled" in result["reason"]
        alert = json.loads(d.ctl("audit", "search", "audit.checkpoint_garbled", "--json",
                                 check=True).stdout)[-1]
        assert reason in alert["detail"]["reason"]
        assert Path(alert["detail"]["moved_to"]).exists()  # kept as evidence
        d.ctl("audit", "reanchor", "--yes", check=True)
        assert verify(d)[0] == 0


def test_an_anchor_file_in_text_form_is_read_too(base: Path):
    with running(base) as d:
        text = d.ctl("audit", "head", "--export", check=True).stdout
        assert "mac: " in text and "key_id: " in text
        (base / "anchor.txt").write_text(text)
        assert verify(d, "--anchor", str(base / "anchor.txt"))[0] == 0
        (base / "junk.txt").write_text("nothing here")
        bad = d.ctl("audit", "verify", "--anchor", str(base / "junk.txt"))
        assert bad.returncode == 2 and "no exported audit head" in bad.stderr
