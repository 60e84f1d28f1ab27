"""``naos``: one program for both sides.

``naos daemon [naosd options]`` runs naosd's main in this process (same pid,
same exit codes, and nothing of naosctl imported: naosd forks its actors from
this image); every other ``naos ...`` is naosctl.  The one-file build
(``deploy/build-bundle.sh``) ships this as its command, and the installed
``naos`` script is the same, so both behave alike.

naosd is imported only for ``daemon``: ``naos ping`` costs what ``naosctl
ping`` costs (``import naosctl.entry`` pulls in nothing heavy; a test checks).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click

DAEMON = "daemon"


def main() -> None:
    if sys.argv[1:2] == [DAEMON]:
        from naosd.main import main as naosd_main

        sys.exit(naosd_main(sys.argv[2:]))
    from naosctl.main import cli
    from naosctl.main import main as naosctl_main

    cli.add_command(daemon_hint())  # listed in `naos --help`; not part of naosctl
    naosctl_main()


def daemon_hint() -> click.Command:
    """The ``daemon`` entry of ``naos --help``.  Run only when options came
    first (``naos --socket S daemon``): naosctl's options mean nothing to
    naosd, so it says where ``daemon`` goes instead of guessing."""
    import click

    @click.command(DAEMON, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def daemon() -> None:
        """Run naosd in the foreground (naos daemon --help: its options)."""
        raise click.UsageError(f"`{DAEMON}` must come first: naos {DAEMON} [naosd options]")

    return daemon
