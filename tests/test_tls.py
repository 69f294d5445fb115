"""DICOM TLS (PS3.15 B.9) against DCMTK storescp +tls and a pynetdicom SCP with an SSL context.

Certificates come from a test CA made here with trustme; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from dicom_fastsend.io.header import read_header
from fastsend_cli import fastsend
from peers import LOOPBACK, PynetdicomSCP, StoreSCP, SynthArchive, dataset_bytes


@dataclass(frozen=True)
class PKI:
    ca: Path  # the test CA's certificate
    other_ca: Path  # a CA that signed nothing we use
    server_key: Path
    server_cert: Path  # for localhost and 127.0.0.1
    expired_cert: Path
    expired_key: Path
    elsewhere_cert: Path  # valid, but for another host name
    elsewhere_key: Path
    client_pem: Path  # our certificate and key in one file
    context: Callable[..., ssl.SSLContext]


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca = trustme.CA()
    other = trustme.CA()
    now = dt.datetime.now(dt.UTC)

    def write(name: str, blob: trustme.Blob) -> Path:
        path = tmp_path / name
        blob.write_to_path(str(path))
        return path

    server = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    expired = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
        key_type=trustme.KeyType.RSA,
    )
    elsewhere = ca.issue_cert("elsewhere.example", key_type=trustme.KeyType.RSA)
    client = ca.issue_cert("fastsend-client", key_type=trustme.KeyType.RSA)
    client_pem = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    ca_path = write("ca.pem", ca.cert_pem)

    def context(cert: trustme.LeafCert = server, require_client: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(ca_path))
        return ctx

    return PKI(
        ca=ca_path,
        other_ca=write("other-ca.pem", other.cert_pem),
        server_key=write("server.key", server.private_key_pem),
        server_cert=write("server.crt", server.cert_chain_pems[0]),
        expired_cert=write("expired.crt", expired.cert_chain_pems[0]),
        expired_key=write("expired.key", expired.private_key_pem),
        elsewhere_cert=write("elsewhere.crt", elsewhere.cert_chain_pems[0]),
        elsewhere_key=write("elsewhere.key", elsewhere.private_key_pem),
        client_pem=client_pem,
        context=context,
    )


def tls_storescp(factory: Callable[..., StoreSCP], key: Path, cert: Path) -> StoreSCP:
    # -ic: storescp does not ask us for a certificate; +tls key cert: its own.
    return factory(tcp_nodelay=True, extra_args=["+tls", str(key), str(cert), "-ic"])


def send(archive: SynthArchive, host: str, port: int, ae: str, *tls: str) -> tuple[int, str]:
    run = fastsend(
        "send", "-i", str(archive.root), "-r", "-a", ae, "-H", host, "-p", str(port),
        "--retries", "0", *tls, timeout=60,
    )  # fmt: skip
    return run.returncode, run.stderr


def test_storescp_over_tls_receives_every_dataset_byte_for_byte(
    archive: SynthArchive, storescp_factory: Callable[..., StoreSCP], pki: PKI
) -> None:
    peer = tls_storescp(storescp_factory, pki.server_key, pki.server_cert)
    code, stderr = send(archive, "localhost", peer.port, peer.aet, "--tls", "--tls-ca", str(pki.ca))
    assert code == 0, stderr + peer.output()
    sent = {uid: dataset_bytes(p) for p, uid in archive.sop_instance_uids.items()}
    received = {read_header(p).sop_instance_uid: dataset_bytes(p) for p in peer.files()}
    assert received == sent


def test_echo_over_tls(storescp_factory: Callable[..., StoreSCP], pki: PKI) -> None:
    peer = tls_storescp(storescp_factory, pki.server_key, pki.server_cert)
    run = fastsend(
        "echo", "-a", peer.aet, "-H", LOOPBACK, "-p", str(peer.port), "--tls-ca", str(pki.ca)
    )
    assert run.returncode == 0, run.output
    assert "0x0000 Success" in run.stdout


def test_client_certificate_for_a_peer_that_requires_one(
    archive: SynthArchive, pynetdicom_scp_factory: Callable[..., PynetdicomSCP], pki: PKI
) -> None:
    scp = pynetdicom_scp_factory(ae_title="TLSSCP", ssl_context=pki.context(require_client=True))
    port = scp.port
    code, stderr = send(
        archive,
        LOOPBACK,
        port,
        "TLSSCP",
        "--tls-ca",
        str(pki.ca),
        "--tls-cert",
        str(pki.client_pem),
    )
    assert code == 0, stderr
    assert {r.sop_instance_uid for r in scp.records()} == archive.uids

    code, stderr = send(archive, LOOPBACK, port, "TLSSCP", "--tls-ca", str(pki.ca))
    assert code == 3, stderr
    # Refused during the handshake (TLS 1.2) or at the first exchange (TLS 1.3).
    assert "TLS" in stderr and "--tls-cert" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("host mismatch", "mismatch"),
    ],
)
def test_untrusted_server_certificates_are_refused_clearly(
    archive: SynthArchive,
    storescp_factory: Callable[..., StoreSCP],
    pki: PKI,
    case: str,
    expected: str,
) -> None:
    key, cert, ca = {
        "wrong CA": (pki.server_key, pki.server_cert, pki.other_ca),
        "expired": (pki.expired_key, pki.expired_cert, pki.ca),
        "host mismatch": (pki.elsewhere_key, pki.elsewhere_cert, pki.ca),
    }[case]
    peer = storescp_factory(tcp_nodelay=True, extra_args=["+tls", str(key), str(cert), "-ic"])
    code, stderr = send(archive, "localhost", peer.port, peer.aet, "--tls-ca", str(ca))
    assert code == 3, stderr
    assert "server certificate was not accepted" in stderr and expected in stderr
    assert "Traceback" not in stderr
    assert not peer.files()


def test_no_verify_must_be_asked_for_and_warns(
    archive: SynthArchive, storescp_factory: Callable[..., StoreSCP], pki: PKI
) -> None:
    peer = tls_storescp(storescp_factory, pki.server_key, pki.server_cert)
    code, stderr = send(
        archive, "localhost", peer.port, peer.aet, "--tls-ca", str(pki.other_ca), "--tls-no-verify"
    )
    assert code == 0, stderr
    assert "WARNING --tls-no-verify" in stderr
    assert len(peer.files()) == len(archive.files)
