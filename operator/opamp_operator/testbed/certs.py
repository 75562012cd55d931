"""Certificates for the local control plane, made with the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .processes import StartupError


@dataclass(frozen=True)
class ControlPlaneCerts:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise StartupError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _signed_cert(
    directory: Path, name: str, subject: str, extensions: str, ca: tuple[Path, Path]
) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("genrsa", "-out", str(key), "2048", cwd=directory)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=directory)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(ext_file), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_certs(directory: Path) -> ControlPlaneCerts:
    """A throwaway CA, an apiserver serving cert for 127.0.0.1, an admin client cert."""
    if shutil.which("openssl") is None:
        raise StartupError("the test bed needs the `openssl` command (Debian package openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    _openssl("genrsa", "-out", str(ca_key), "2048", cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=opamp-operator-testbed-ca",
        "-days", "30", "-sha256", "-out", str(ca_cert), cwd=directory,
    )  # fmt: skip
    serving_cert, serving_key = _signed_cert(
        directory,
        "apiserver",
        "/CN=kube-apiserver",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n",
        (ca_cert, ca_key),
    )
    admin_cert, admin_key = _signed_cert(
        directory,
        "admin",
        "/O=system:masters/CN=testbed-admin",
        "extendedKeyUsage=clientAuth\n",
        (ca_cert, ca_key),
    )
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _openssl("genrsa", "-out", str(sa_key), "2048", cwd=directory)
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=directory)
    return ControlPlaneCerts(
        ca_cert=ca_cert,
        ca_key=ca_key,
        serving_cert=serving_cert,
        serving_key=serving_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        service_account_key=sa_key,
        service_account_pub=sa_pub,
    )
