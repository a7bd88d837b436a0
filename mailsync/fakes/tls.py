"""A generated CA and server certificate, so real client libraries talk HTTPS to the fakes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class FakeTLS:
    ca_path: Path
    cert_path: Path
    key_path: Path


def ensure_tls(directory: Path) -> FakeTLS:
    """Create (once) a CA and a certificate for 127.0.0.1/localhost under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = FakeTLS(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if tls.ca_path.exists() and tls.cert_path.exists() and tls.key_path.exists():
        return tls
    ca = trustme.CA(organization_name="mailsync fake providers")
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ca.cert_pem.write_to_path(str(tls.ca_path))
    cert.private_key_pem.write_to_path(str(tls.key_path))
    with tls.cert_path.open("wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    tls.key_path.chmod(0o600)
    return tls
