"""The `fastsend` command. Options become config objects; the work is elsewhere.

Exit status (results.ExitStatus): 0 all stored, 1 some failed, 2 usage
error, 3 nothing could start (no association, cluster or journal), 4 nothing
to send, 130 interrupted.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.decorators import FC

from . import __version__
from .config import (
    DEFAULT_ACSE_TIMEOUT,
    DEFAULT_CALLING_AE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DIMSE_TIMEOUT,
    DEFAULT_MAX_PDU_LENGTH,
    ORDERS,
    PeerConfig,
    SendConfig,
    TLSConfig,
    UserCredentials,
)
from .engine.results import ExitStatus
from .protocol.dimse import status_text
from .verify_cmd import commit_config, commit_options, verify_command

if TYPE_CHECKING:
    from .io.coerce import Coercion


def _version() -> str:
    from .protocol.hotpath import IMPLEMENTATION

    return f"fastsend {__version__} (hot path: {IMPLEMENTATION})"


def _peer_options(function: FC) -> FC:
    """Options naming the destination, shared by `send` and `echo`."""
    options = [
        click.option(
            "-a", "--ae-title", "called", required=True, help="Called AE title (destination)."
        ),
        click.option("-H", "--host", required=True, help="Destination host name or IP address."),
        click.option(
            "-p", "--port", required=True, type=click.IntRange(1, 65535), help="Destination port."
        ),
        click.option(
            "-c",
            "--calling-ae",
            "calling",
            default=DEFAULT_CALLING_AE,
            show_default=True,
            help="Calling AE title (this sender).",
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_CONNECT_TIMEOUT,
            show_default=True,
            help="Seconds to wait for the TCP connection.",
        ),
        click.option(
            "--acse-timeout",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_ACSE_TIMEOUT,
            show_default=True,
            help="Seconds to wait for A-ASSOCIATE-AC and A-RELEASE-RP.",
        ),
        click.option(
            "--dimse-timeout",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_DIMSE_TIMEOUT,
            show_default=True,
            help="Seconds to wait for each C-STORE-RSP or C-ECHO-RSP.",
        ),
        click.option(
            "--max-pdu",
            "max_pdu",
            type=click.IntRange(min=0),
            default=DEFAULT_MAX_PDU_LENGTH,
            show_default=True,
            help="Maximum PDU length this side receives (0: no limit).",
        ),
    ]
    options += [
        click.option("--tls", is_flag=True, help="DICOM TLS (TLS 1.2 or newer, PS3.15 B.9)."),
        click.option(
            "--tls-ca",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="CA certificates (PEM) to verify the destination with (default: the system's).",
        ),
        click.option(
            "--tls-cert",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Our certificate (PEM), for destinations that require one.",
        ),
        click.option(
            "--tls-key",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="The private key of --tls-cert, if not in the same file.",
        ),
        click.option(
            "--tls-no-verify",
            is_flag=True,
            help="Do not verify the destination's certificate (insecure; says so).",
        ),
    ]
    options += [
        click.option("--user", help="User name for User Identity negotiation (PS3.7 D.3.3.7)."),
        click.option(
            "--password-env",
            metavar="VAR",
            help="Environment variable holding the password for --user (else it is asked "
            "for when stdin is a terminal). Never on the command line.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _user(user: str | None, password_env: str | None) -> UserCredentials | None:
    if user is None:
        if password_env is not None:
            raise click.UsageError("--password-env needs --user")
        return None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise click.UsageError(f"--password-env {password_env}: that variable is not set")
        return UserCredentials(user, password)
    if sys.stdin.isatty():
        typed = click.prompt(
            f"Password for {user} (empty: user name only)",
            hide_input=True,
            default="",
            show_default=False,
            err=True,
        )
        return UserCredentials(user, typed or None)
    return UserCredentials(user)


def _tls(
    tls: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_no_verify: bool,
) -> TLSConfig | None:
    if not (tls or tls_ca or tls_cert or tls_key or tls_no_verify):
        return None
    if tls_key is not None and tls_cert is None:
        raise click.UsageError("--tls-key needs --tls-cert")
    if tls_no_verify:
        click.echo(
            "WARNING --tls-no-verify: the destination's certificate is not checked; anyone "
            "on the network path can pose as it and read the images",
            err=True,
        )
    return TLSConfig(ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, verify=not tls_no_verify)


def _peer(
    called: str,
    host: str,
    port: int,
    calling: str,
    connect_timeout: float,
    acse_timeout: float,
    dimse_timeout: float,
    max_pdu: int,
    user: str | None,
    password_env: str | None,
    **tls: Any,
) -> PeerConfig:
    try:
        return PeerConfig(
            host=host,
            port=port,
            called_ae_title=called,
            calling_ae_title=calling,
            connect_timeout=connect_timeout,
            acse_timeout=acse_timeout,
            dimse_timeout=dimse_timeout,
            max_pdu_length=max_pdu,
            tls=_tls(**tls),
            user=_user(user, password_env),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", message=_version())
def main() -> None:
    """fastsend: send DICOM files to a PACS with C-STORE, fast, and account for every one."""


def _input_options(function: FC) -> FC:
    """Options naming what to read, shared by `send` and `scan`."""
    function = click.option("-r", "--recursive", is_flag=True, help="Descend into subdirectories.")(
        function
    )
    function = click.option(
        "--input-list",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A file of paths, one per line, or a fastsend_failures_*.csv to resend.",
    )(function)
    return click.option(
        "-i",
        "--input",
        "inputs",
        multiple=True,
        type=click.Path(path_type=Path),
        help="File or directory (repeatable).",
    )(function)


def _all_inputs(inputs: tuple[Path, ...], input_list: Path | None) -> tuple[Path, ...]:
    from .report import read_input_list

    listed = tuple(read_input_list(input_list)) if input_list is not None else ()
    if not inputs and input_list is None:
        raise click.UsageError("Missing option '-i' / '--input' (or --input-list).")
    return inputs + listed


@main.command()
@_input_options
@_peer_options
@click.option(
    "-P",
    "--processes",
    "-t",
    "--threads",
    "processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker processes, each with its own association (-t/--threads: the same).",
)
@click.option(
    "--max-rate",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Limit in MB/s across all workers (0: no limit).",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("logs"),
    show_default=True,
    help="Where the session log and the JSON summary go.",
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite journal of every outcome (default: one per destination in --log-dir).",
)
@click.option("--no-resume", is_flag=True, help="Send everything, even what the journal has.")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries per file after a transient failure (refused, reset, A-ABORT, timeout, A7xx).",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Seconds before the first retry; doubles with each one (30 s at most).",
)
@click.option(
    "--transcode",
    type=click.Choice(["never", "if-needed"]),
    default="never",
    show_default=True,
    help="if-needed: decompress compressed files, inflate deflated ones and convert big "
    "endian ones to Explicit or Implicit VR Little Endian for a destination that takes their "
    "class only uncompressed (JPEG needs dicom-fastsend[codecs]); never: they fail, named.",
)
@click.option(
    "--max-ops",
    type=click.IntRange(1, 65535),
    default=1,
    show_default=True,
    help="C-STOREs in flight per association when the destination agrees "
    "(Asynchronous Operations Window, PS3.7 D.3.3.3); otherwise one at a time.",
)
@click.option(
    "--cluster",
    metavar="tcp://HOST:8786",
    help="Run the workers as tasks on this Dask scheduler's workers instead of local "
    "processes (needs dicom-fastsend[cluster]; every worker must see the files at the "
    "same paths). -P is then ignored: the cluster's worker threads set the parallelism.",
)
@click.option(
    "--commit",
    is_flag=True,
    help="After sending, ask the destination to commit what this session stored "
    "(Storage Commitment, PS3.4 Annex J; see --commit-port).",
)
@commit_options
@click.option(
    "--coerce",
    "coerce_rules",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Change elements on the way: a CSV with the header keyword,match,replace (see README).",
)
@click.option(
    "--order",
    type=click.Choice(list(ORDERS)),
    default="path",
    show_default=True,
    help="path: send while walking, in path order. newest-first, oldest-first: by Study "
    "Date/Time, after the walk and a header read of each directory's first and last file.",
)
@click.option(
    "--priority-list",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file of Study Instance UIDs or Accession Numbers, one a line: those studies go "
    "first, in the list's order (then the rest in --order).",
)
@click.option(
    "--schedule",
    metavar='"DAYS [HH:MM-HH:MM]=MB/s|pause; ..."',
    help='Time windows (local time), e.g. "Mon-Fri 07:00-19:00=20; Sat-Sun=0": a rate '
    "limit in MB/s (0: none) or pause for each; the first window that matches wins, "
    "--max-rate holds outside them. SIGUSR1 toggles a manual pause.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics while the run goes "
    "(needs dicom-fastsend[metrics]).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="The address the metrics endpoint listens on.",
)
@click.option(
    "--metrics-linger",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Seconds the metrics endpoint still answers after the run (for a last scrape).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Print every file's result.")
def send(
    inputs: tuple[Path, ...],
    input_list: Path | None,
    recursive: bool,
    processes: int,
    max_rate: float,
    log_dir: Path,
    journal: Path | None,
    no_resume: bool,
    retries: int,
    retry_delay: float,
    transcode: str,
    max_ops: int,
    cluster: str | None,
    commit: bool,
    commit_port: int | None,
    commit_bind: str,
    commit_batch: int,
    commit_timeout: float,
    coerce_rules: Path | None,
    order: str,
    priority_list: Path | None,
    schedule: str | None,
    metrics_port: int | None,
    metrics_address: str,
    metrics_linger: float,
    no_progress: bool,
    verbose: bool,
    **peer: Any,
) -> None:
    """Send DICOM files with C-STORE."""
    priorities = _migration_controls(priority_list, schedule, metrics_port)
    if cluster is not None and importlib.util.find_spec("distributed") is None:
        from .engine.cluster import INSTALL_HINT

        raise click.UsageError(
            f"--cluster needs Dask's distributed package, which is not installed. "
            f"Install it with: {INSTALL_HINT}"
        )
    from .report import ConsoleReporter, ProgressBar, summarize
    from .sender import send as run_send
    from .sender import session_paths

    gc.freeze()  # and what the send's own imports made (see run)
    config = SendConfig(
        peer=_peer(**peer),
        inputs=_all_inputs(inputs, input_list),
        recursive=recursive,
        verbose=verbose,
        processes=processes,
        max_rate_mb_s=max_rate,
        log_dir=log_dir,
        progress=not no_progress,
        journal_path=journal,
        resume=not no_resume,
        retries=retries,
        retry_delay=retry_delay,
        transcode=transcode == "if-needed",
        max_ops=max_ops,
        cluster=cluster,
        commit=(
            commit_config(commit_port, commit_bind, commit_batch, commit_timeout)
            if commit
            else None
        ),
        coerce=_coercion(coerce_rules),
        order=order,
        priority_list=priorities,
        schedule=schedule,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        metrics_linger=metrics_linger,
    )
    progress = ProgressBar(enabled=config.progress)
    summary = run_send(config, ConsoleReporter(verbose, progress), progress)
    summarize(summary)
    log, json_summary, failures = session_paths(log_dir, summary.session_id)
    click.echo(f"session log: {log}\nsummary: {json_summary}", err=True)
    if failures.exists():
        click.echo(
            f"failures: {failures} (resend them with: fastsend send --input-list {failures} ...)",
            err=True,
        )
    if summary.audit_report is not None:
        since = summary.audit_unchanged_since
        click.echo(
            f"audit: {summary.audit_report}"
            + (
                f" (still holds: written by session {since}; the journal has not changed since)"
                if since
                else ""
            ),
            err=True,
        )
    sys.exit(summary.exit_code)


def _coercion(path: Path | None) -> Coercion | None:
    """--coerce: the rules read and checked before anything is sent (a bad line is a usage
    error naming it)."""
    if path is None:
        return None
    from .io.coerce import CoercionRulesError, load_rules_apart

    try:
        return load_rules_apart(path)
    except CoercionRulesError as exc:
        raise click.BadParameter(str(exc), param_hint="--coerce") from exc


def _migration_controls(
    priority_list: Path | None, schedule: str | None, metrics_port: int | None
) -> tuple[str, ...]:
    """Check --schedule and --metrics-port, read --priority-list: usage errors before the run."""
    if schedule is not None:
        from .engine.schedule import ScheduleError, parse_schedule

        try:
            parse_schedule(schedule)
        except ScheduleError as exc:
            raise click.BadParameter(str(exc), param_hint="--schedule") from None
    if metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
        from .engine.metrics import INSTALL_HINT

        raise click.UsageError(
            "--metrics-port needs prometheus-client, which is not installed. "
            f"Install it with: {INSTALL_HINT}"
        )
    if priority_list is None:
        return ()
    from .engine.order import PriorityListError, read_priority_list

    try:
        return read_priority_list(priority_list)
    except PriorityListError as exc:
        raise click.BadParameter(str(exc), param_hint="--priority-list") from None


def _journal_options(journal_help: str) -> Callable[[FC], FC]:
    """The destination whose journal to read (-a/-H/-p, --log-dir) or --journal:
    shared by `scan` and `status`, which never contact the destination."""

    def decorate(function: FC) -> FC:
        options = [
            click.option("-a", "--ae-title", "called", help="Destination AE title (with -H, -p)."),
            click.option("-H", "--host", help="Destination host (with -a and -p)."),
            click.option("-p", "--port", type=click.IntRange(1, 65535), help="Destination port."),
            click.option(
                "--log-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=Path("logs"),
                show_default=True,
                help="Where send keeps the destination's journal.",
            ),
            click.option(
                "--journal", type=click.Path(dir_okay=False, path_type=Path), help=journal_help
            ),
        ]
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _journal_destination(
    called: str | None, host: str | None, port: int | None
) -> PeerConfig | None:
    """The destination named by -a/-H/-p (all three or none); it is not contacted."""
    destination = (called, host, port)
    if all(v is None for v in destination):
        return None
    if called is None or host is None or port is None:
        raise click.UsageError("-a, -H and -p go together (the destination whose journal to read)")
    try:
        return PeerConfig(host=host, port=port, called_ae_title=called)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@main.command()
@_input_options
@_journal_options("The journal send would use (default: the destination's in --log-dir).")
@click.option("--no-resume", is_flag=True, help="As send --no-resume: ignore the journal.")
@click.option(
    "--transcode",
    type=click.Choice(["never", "if-needed"]),
    default="never",
    show_default=True,
    help="As send --transcode (changes the presentation contexts planned).",
)
@click.option(
    "--coerce",
    "coerce_rules",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Show what send --coerce would change (the same CSV rules file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def scan(
    inputs: tuple[Path, ...],
    input_list: Path | None,
    recursive: bool,
    called: str | None,
    host: str | None,
    port: int | None,
    log_dir: Path,
    journal: Path | None,
    no_resume: bool,
    transcode: str,
    coerce_rules: Path | None,
    as_json: bool,
) -> None:
    """Show what `send` would do: files, instances, duplicates, already stored, unreadable.

    With -a/-H/-p it consults that destination's journal as `send` does, so
    its counts are the ones `send` would report. Exit status as send's: 1
    when files would fail, 4 when there is nothing to send.
    """
    import json

    from .engine.inventory import JournalError
    from .survey import format_report
    from .survey import scan as run_scan

    destination = _journal_destination(called, host, port)
    if journal is not None and destination is None:
        raise click.UsageError(
            "--journal needs the destination (-a, -H, -p): a journal holds several"
        )
    # Without a destination the peer is never contacted and no journal is read.
    peer = destination or PeerConfig(host="localhost", port=104, called_ae_title="SCAN")
    config = SendConfig(
        peer=peer,
        inputs=_all_inputs(inputs, input_list),
        recursive=recursive,
        log_dir=log_dir,
        journal_path=journal,
        resume=destination is not None and not no_resume,
        transcode=transcode == "if-needed",
        coerce=_coercion(coerce_rules),
    )
    try:
        report = run_scan(config)
    except JournalError as exc:
        click.echo(f"ERROR {exc}", err=True)
        sys.exit(ExitStatus.NO_ASSOCIATION)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))
    sys.exit(report.exit_code)


@main.command()
@_journal_options("The journal to read (instead of -a/-H/-p).")
@click.option("--session", "session_id", help="The session to report on (default: the latest).")
@click.option(
    "--studies",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Studies listed, most files not stored first (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(
    called: str | None,
    host: str | None,
    port: int | None,
    log_dir: Path,
    journal: Path | None,
    session_id: str | None,
    studies: int,
    as_json: bool,
) -> None:
    """Show a migration's progress from its journal, while `send` runs or after.

    Counts per state (all sessions, and the latest or --session), what the
    destination holds, failures by reason, per-study progress, rate and ETA.
    The journal is only read, never written. Give the destination (-a/-H/-p,
    and send's --log-dir) or --journal. Exit 3 when there is no usable journal.
    """
    import json

    from .config import default_journal_path, destination_key
    from .engine.inventory import JournalError
    from .status import UnknownSession, format_status, read_status

    peer = _journal_destination(called, host, port)
    if journal is None and peer is None:
        raise click.UsageError("give the destination (-a, -H, -p) or --journal")
    expected = None
    if peer is not None:
        expected = destination_key(peer)
        journal = journal or default_journal_path(log_dir, peer)
    assert journal is not None
    try:
        report = read_status(journal, session_id, studies or None, expected)
    except JournalError as exc:
        click.echo(f"ERROR {exc}", err=True)
        sys.exit(ExitStatus.NO_ASSOCIATION)
    except UnknownSession as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_status(report))


@main.command()
@_journal_options("The journal to report on (instead of -a/-H/-p).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the report (default: --log-dir; with --journal alone, its folder).",
)
def audit(
    called: str | None,
    host: str | None,
    port: int | None,
    log_dir: Path,
    journal: Path | None,
    out_dir: Path | None,
) -> None:
    """Write the per-study audit report of a migration: CSV, JSON and an HTML page.

    Per study: files found, stored, committed, found by C-FIND, failed, skipped,
    missing at the destination, and the main reasons. `send` writes the same
    report at its end. The journal is only read. Exit 3 when there is no usable journal.
    """
    from .audit import format_audit, write_audit
    from .config import default_journal_path, destination_key
    from .engine.inventory import JournalError

    peer = _journal_destination(called, host, port)
    if journal is None and peer is None:
        raise click.UsageError("give the destination (-a, -H, -p) or --journal")
    expected = None
    if peer is not None:
        expected = destination_key(peer)
        journal = journal or default_journal_path(log_dir, peer)
    assert journal is not None
    if out_dir is None:
        out_dir = log_dir if peer is not None else journal.parent
    try:
        written = write_audit(journal, out_dir, destination=expected)
    except JournalError as exc:
        click.echo(f"ERROR {exc}", err=True)
        sys.exit(ExitStatus.NO_ASSOCIATION)
    except OSError as exc:
        click.echo(f"ERROR cannot write the audit report in {out_dir}: {exc}", err=True)
        sys.exit(ExitStatus.NO_ASSOCIATION)
    click.echo(format_audit(written))


@main.command()
@_peer_options
def echo(**peer: Any) -> None:
    """Check a destination with C-ECHO (verification)."""
    from .sender import echo as run_echo

    config = _peer(**peer)
    response, problem = run_echo(config)
    if response is None:
        click.echo(f"ERROR {problem}", err=True)
        sys.exit(ExitStatus.NO_ASSOCIATION)
    destination = f"{config.called_ae_title}@{config.host}:{config.port}"
    click.echo(f"C-ECHO {destination}: {status_text(response.status)}")
    sys.exit(0 if response.status == 0 else 1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-p", "--port", default=11112, show_default=True, type=click.IntRange(0, 65535))
@click.option("-a", "--ae-title", default="FASTSEND_SINK", show_default=True)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write received instances here as Part 10 files (default: discard).",
)
def sink(host: str, port: int, ae_title: str, output_dir: Path | None) -> None:
    """Receive C-STOREs (a Storage SCP for tests and benchmarks) until Ctrl-C."""
    from .sink import Sink

    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    try:
        receiver = Sink(host=host, port=port, ae_title=ae_title, output_dir=output_dir)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
            "(0 picks a free one), or stop what listens there"
        ) from exc
    click.echo(f"fastsend sink {ae_title} listening on {host}:{receiver.port}", err=True)
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
        stats = receiver.stats
        click.echo(
            f"received {stats.instances} instances, {stats.bytes / 1e6:.1f} MB "
            f"in {stats.associations} associations",
            err=True,
        )


def _synthetic_options(function: FC) -> FC:
    """The synthetic data set of `demo` and `bench`: studies x instances of size x size."""
    options = [
        click.option("--studies", default=4, show_default=True, type=click.IntRange(1, 1000)),
        click.option(
            "--instances",
            default=25,
            show_default=True,
            type=click.IntRange(1, 10000),
            help="Instances per study.",
        ),
        click.option(
            "--size",
            default=256,
            show_default=True,
            type=click.IntRange(8, 4096),
            help="Rows and columns of each synthetic 16-bit image.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command()
@_synthetic_options
@click.option("-P", "--processes", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("-v", "--verbose", is_flag=True)
def demo(studies: int, instances: int, size: int, processes: int, verbose: bool) -> None:
    """Make synthetic studies and send them to a receiver started here."""
    import tempfile

    from .report import ConsoleReporter, summarize
    from .sender import send as run_send
    from .sink import Sink
    from .synth import write_archive

    with tempfile.TemporaryDirectory(prefix="fastsend-demo-") as directory:
        root = Path(directory)
        write_archive(
            root / "archive",
            studies=studies,
            instances_per_study=instances,
            rows=size,
            columns=size,
        )
        with Sink(ae_title="DEMO_SINK") as receiver:
            click.echo(
                f"sending {studies} studies x {instances} instances ({size}x{size}, 16 bit) "
                f"to the built-in sink DEMO_SINK at 127.0.0.1:{receiver.port}",
                err=True,
            )
            config = SendConfig(
                peer=PeerConfig(host="127.0.0.1", port=receiver.port, called_ae_title="DEMO_SINK"),
                inputs=(root / "archive",),
                recursive=True,
                verbose=verbose,
                processes=processes,
                log_dir=None,
            )
            summary = run_send(config, ConsoleReporter(verbose))
        summarize(summary)
        click.echo(f"the sink received {receiver.stats.instances} instances", err=True)
    sys.exit(summary.exit_code)


@main.command()
@_synthetic_options
@click.option("-P", "--processes", default=1, show_default=True, type=click.IntRange(1, 256))
@click.option("--max-ops", default=1, show_default=True, type=click.IntRange(1, 65535))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 100))
@click.option("-H", "--host", help="Send to this peer instead of the built-in sink.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="The peer's port (with --host).")
@click.option(
    "-a", "--called-ae", default="ANY-SCP", show_default=True, help="The peer's AE title."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(
    studies: int,
    instances: int,
    size: int,
    processes: int,
    max_ops: int,
    runs: int,
    host: str | None,
    port: int | None,
    called_ae: str,
    as_json: bool,
) -> None:
    """Send synthetic studies to the built-in sink (or --host) and report the rate.

    Exit status 0 only if every run stored every file (and the sink received
    each). The comparison with DCMTK, pynetdicom and Orthanc is not part of
    the package: run `python bench/run.py` from a checkout.
    """
    import json

    from . import benchmark

    if (host is None) != (port is None):
        raise click.UsageError("--host and --port go together")
    peer = None
    if host is not None and port is not None:
        try:
            peer = PeerConfig(host=host, port=port, called_ae_title=called_ae)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    options = benchmark.BenchOptions(
        studies=studies,
        instances=instances,
        size=size,
        processes=processes,
        max_ops=max_ops,
        runs=runs,
        peer=peer,
    )
    report = benchmark.run_bench(options, lambda line: click.echo(line, err=True))
    click.echo(
        json.dumps(report.as_dict(), indent=2) if as_json else benchmark.format_bench(report)
    )
    sys.exit(report.exit_code)


main.add_command(verify_command(_peer_options, _peer))


def run() -> None:
    """The `fastsend` command (console script and `python -m`): `main`, then a quick exit.

    The interpreter's teardown at exit frees every module and object one by one:
    12 ms of the 90 ms of CPU of a one-file send, for nothing a finished command
    needs. Its files are closed by then, and what must run at exit still does
    (atexit: multiprocessing joins its children, temporary directories go), so
    the process then ends at once. A string exit status (a message to print),
    another thread still running, or output that cannot be flushed take the
    normal way out.
    """
    # What the imports made lives until the exit: the collector need not scan it
    # again at each of its runs (about 1 ms of a one-file send). Here, not at
    # import: the command's process is ours, a program that imports us is not.
    gc.freeze()
    try:
        main()
    except SystemExit as exc:
        _exit_now(exc.code)
        raise


def _exit_now(code: object) -> None:
    """End the process with ``code`` (a SystemExit's) without the teardown, or return."""
    import atexit
    import threading

    if code is None:
        code = 0
    if not isinstance(code, int) or threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed or broken stream: Python reports it as it always does
    atexit._run_exitfuncs()  # run once: they are cleared after
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)
