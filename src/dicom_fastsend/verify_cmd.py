"""`fastsend verify`, and the Storage Commitment options `send --commit` shares.

Options become a VerifyConfig (or a CommitConfig); the work is in
engine/verify.py. cli.py registers the command (verify_command) with its
own destination options, so this module does not import cli.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.decorators import FC

from .config import (
    DEFAULT_COMMIT_BATCH,
    DEFAULT_COMMIT_TIMEOUT,
    CommitConfig,
    PeerConfig,
    VerifyConfig,
)
from .engine.results import ExitStatus


def commit_options(function: FC) -> FC:
    """--commit-port, --commit-bind, --commit-batch, --commit-timeout."""
    options = [
        click.option(
            "--commit-port",
            type=click.IntRange(1, 65535),
            help="Listen here for the Storage Commitment report (N-EVENT-REPORT) when the "
            "destination sends it on an association of its own; register fastsend there with "
            "our calling AE title (-c), this host and this port. Without it, reports are "
            "taken only on the association of the request.",
        ),
        click.option(
            "--commit-bind",
            default="",
            metavar="ADDRESS",
            help="Address to listen on with --commit-port (default: all interfaces: any host "
            "that reaches this port and calls our AE title may send reports; give the address "
            "the destination reaches us at to listen there only).",
        ),
        click.option(
            "--commit-batch",
            type=click.IntRange(min=1),
            default=DEFAULT_COMMIT_BATCH,
            show_default=True,
            help="Instances per Storage Commitment request (one Transaction UID each).",
        ),
        click.option(
            "--commit-timeout",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_COMMIT_TIMEOUT,
            show_default=True,
            help="Seconds to wait for the reports after the last request; instances not "
            "reported stay uncommitted.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def commit_config(
    commit_port: int | None, commit_bind: str, commit_batch: int, commit_timeout: float
) -> CommitConfig:
    try:
        return CommitConfig(
            port=commit_port, bind=commit_bind, batch=commit_batch, timeout=commit_timeout
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def verify_command(peer_options: Decorator, make_peer: Callable[..., PeerConfig]) -> click.Command:
    """The `verify` command, with cli.py's destination options and their PeerConfig maker."""

    @click.command(name="verify")
    @peer_options
    @click.option(
        "--log-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("logs"),
        show_default=True,
        help="The send's --log-dir: its journal is read there, the missing list written there.",
    )
    @click.option(
        "--journal",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The journal to verify (default: the destination's in --log-dir).",
    )
    @click.option("--find", is_flag=True, help="C-FIND reconciliation (Study Root, PS3.4 C.6.2).")
    @click.option("--commit", is_flag=True, help="Storage Commitment Push Model (PS3.4 Annex J).")
    @commit_options
    def verify(
        log_dir: Path,
        journal: Path | None,
        find: bool,
        commit: bool,
        commit_port: int | None,
        commit_bind: str,
        commit_batch: int,
        commit_timeout: float,
        **peer: Any,
    ) -> None:
        """Prove that the destination holds what the journal says was stored.

        --find asks the destination with C-FIND, study by study (then series
        and image where the counts differ); --commit asks it to commit every
        instance (Storage Commitment). Neither: both. Instances missing at the
        destination or whose commitment failed are written to
        fastsend_missing_<session>.csv in --log-dir, which `fastsend send
        --input-list` resends. Exit 0 when every instance is verified, 1 when
        some are missing, not committed or not checked, 3 when no method could
        run (the destination cannot be reached, or refused both C-FIND and
        Storage Commitment) or the journal cannot be used, 4 when the journal
        records nothing stored there.
        """
        from .engine.inventory import JournalError
        from .engine.verify import format_report
        from .engine.verify import verify as run_verify
        from .sender import new_session_id

        if not find and not commit:
            find = commit = True
        config = VerifyConfig(
            peer=make_peer(**peer),
            find=find,
            commit=(
                commit_config(commit_port, commit_bind, commit_batch, commit_timeout)
                if commit
                else None
            ),
            log_dir=log_dir,
            journal_path=journal,
        )

        def log(level: str, message: str) -> None:
            if level != "info":
                click.echo(f"{level.upper()} {message}", err=True)

        session_id = new_session_id()
        try:
            report = run_verify(config, session_id, log)
        except JournalError as exc:
            click.echo(f"ERROR {exc}", err=True)
            sys.exit(ExitStatus.NO_ASSOCIATION)
        for line in format_report(report):
            click.echo(line)
        _audit(config, session_id)
        sys.exit(report.exit_code)

    return verify


def _audit(config: VerifyConfig, session_id: str) -> None:
    """The audit report, now with what the verification found, beside the missing list.
    One that cannot be written is reported, and changes nothing of the exit status."""
    from .audit import write_audit
    from .engine.inventory import JournalError

    try:
        written = write_audit(config.journal, config.log_dir, session_id)
    except (JournalError, OSError) as exc:
        click.echo(f"WARNING no audit report written: {exc}", err=True)
        return
    click.echo(f"audit: {written.html}", err=True)
