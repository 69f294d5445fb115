"""Shared fixtures: a synthetic archive and real peers on loopback.

Factories start as many peers as a test wants and stop every one of them at
teardown, also when the test failed.

The peer machinery (tests/peers.py, and through it pynetdicom and DCMTK's
finder) is imported inside the fixtures, not here: this file is loaded for
every test, and the pure unit tests (test_plan.py, test_ul_pdu.py ...) must
run without any of it (test_isolation.py checks that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dicom_fastsend.sink import Sink
    from peers import Orthanc, PynetdicomSCP, StoreSCP, SynthArchive


@pytest.fixture
def sink() -> Iterator[Sink]:
    """fastsend's own Storage SCP (AE SINK), discarding, in this process."""
    from dicom_fastsend.sink import Sink

    with Sink(ae_title="SINK") as receiver:
        yield receiver


@pytest.fixture
def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    from peers import free_port

    return free_port()


@pytest.fixture
def archive(tmp_path: Path) -> SynthArchive:
    """3 CT studies x 3 instances in Explicit VR LE + 1 MR study x 3 in Implicit VR LE."""
    from peers import make_archive

    return make_archive(tmp_path / "archive")


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """start(**kwargs) -> StoreSCP; kwargs as peers.start_storescp, plus output_dir."""
    from peers import start_storescp

    started: list[StoreSCP] = []

    def start(*, output_dir: Path | None = None, **kwargs: Any) -> StoreSCP:
        directory = output_dir or tmp_path / f"storescp{len(started)}" / "out"
        peer = start_storescp(directory, **kwargs)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.stop()


@pytest.fixture
def storescp(storescp_factory: Callable[..., StoreSCP]) -> StoreSCP:
    """A stock storescp (AE STORESCP, no --fork, Nagle on) writing files."""
    return storescp_factory()


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """start(**kwargs) -> Orthanc; kwargs as peers.start_orthanc, plus workdir."""
    from peers import start_orthanc

    started: list[Orthanc] = []

    def start(*, workdir: Path | None = None, **kwargs: Any) -> Orthanc:
        peer = start_orthanc(workdir or tmp_path / f"orthanc{len(started)}", **kwargs)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in started:
            peer.stop()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """An empty Orthanc (AE ORTHANC) with its own storage."""
    return orthanc_factory()


@pytest.fixture
def pynetdicom_scp_factory() -> Iterator[Callable[..., PynetdicomSCP]]:
    """start(**kwargs) -> running PynetdicomSCP; kwargs as its dataclass fields."""
    from peers import PynetdicomSCP

    started: list[PynetdicomSCP] = []

    def start(**kwargs: Any) -> PynetdicomSCP:
        scp = PynetdicomSCP(**kwargs)
        started.append(scp)
        return scp.start()

    try:
        yield start
    finally:
        for scp in started:
            scp.shutdown()


@pytest.fixture
def pynetdicom_scp(pynetdicom_scp_factory: Callable[..., PynetdicomSCP]) -> PynetdicomSCP:
    """A pynetdicom SCP accepting everything and answering Success."""
    return pynetdicom_scp_factory()
