"""TLS material for a SuperLink and authentication keys for SuperNodes.

``fedunlearn make-certs`` (or ``python -m deploy.certs``) has three modes:

- ``server``: on the coordinator: a private CA (``ca.crt``, ``ca.key``) and a server
  certificate signed by it (``server.pem``, ``server.key``) whose subjectAltName lists the
  SuperLink's host names and IPs (the SuperLink's own SuperExec connects via 127.0.0.1, so
  it is always included). Hospitals get ``ca.crt`` only.
- ``node``: at a hospital: one ECDSA P-384 key pair in OpenSSH format (``<name>.key``,
  ``<name>.pub``). The private key never leaves the hospital; the coordinator registers the
  ``.pub`` with ``flwr supernode register``.
- ``local``: everything for a loopback test federation in one folder.

Keys are written with mode 0600 and the folder gets a ``.gitignore`` of ``*``, so neither
the keys nor the certificates can be committed by accident. Existing files are never
replaced unless ``--force`` is given. Equivalent to the ``openssl`` / ``ssh-keygen`` commands
in docs/DEPLOYMENT.md, without needing those tools.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CURVE = ec.SECP384R1


@dataclass(frozen=True)
class ServerCredentials:
    """The CA and the SuperLink's certificate and key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class LocalCredentials:
    """Everything a loopback federation needs."""

    server: ServerCredentials
    nodes: tuple[NodeKey, ...]


def _prepare(folder: Path, names: Sequence[str], *, force: bool) -> None:
    """Create ``folder`` (git-ignored) and refuse to replace existing files unless ``force``."""
    existing = [n for n in names if (folder / n).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{folder} already holds {', '.join(existing)}; use another folder or --force "
            "(replacing a CA invalidates every certificate it signed)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# keys and certificates: never commit\n*\n", encoding="utf-8")


def _write(path: Path, data: bytes, *, secret: bool) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    flags = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{flag: enabled.get(flag, False) for flag in flags})


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_server_credentials(
    folder: Path,
    *,
    hosts: Sequence[str] = LOOPBACK_HOSTS,
    days: int = 30,
    organization: str = "fedunlearn",
    force: bool = False,
) -> ServerCredentials:
    """Create a private CA and a SuperLink certificate for ``hosts`` (+ loopback), valid ``days`` days."""
    files = ServerCredentials(folder / "ca.crt", folder / "ca.key", folder / "server.pem", folder / "server.key")
    _prepare(folder, [p.name for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key)], force=force)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} private CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(CURVE())
    all_hosts = [*hosts, *LOOPBACK_HOSTS]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, all_hosts[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(files.ca_key, _pem_key(ca_key), secret=True)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    _write(files.server_key, _pem_key(server_key), secret=True)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return files


def make_node_key(folder: Path, *, name: str, force: bool = False) -> NodeKey:
    """Create an ECDSA P-384 key pair in OpenSSH format: ``<name>.key`` (0600) and ``<name>.pub``."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"node name must be letters, digits, '-', '_' or '.', got {name!r}")
    files = NodeKey(name, folder / f"{name}.key", folder / f"{name}.pub")
    _prepare(folder, [files.private_key.name, files.public_key.name], force=force)
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(files.private_key, private, secret=True)
    _write(files.public_key, public + f" {name}\n".encode(), secret=False)
    return files


def make_local_credentials(
    folder: Path, *, node_names: Sequence[str], days: int = 30, force: bool = False
) -> LocalCredentials:
    """Create a CA, a loopback server certificate and one key pair per node name, all in ``folder``."""
    names = [
        "ca.crt",
        "ca.key",
        "server.pem",
        "server.key",
        *(f"{n}{ext}" for n in node_names for ext in (".key", ".pub")),
    ]
    _prepare(folder, names, force=force)  # all or nothing: check every file before writing one
    server = make_server_credentials(folder, days=days, force=True)
    return LocalCredentials(server, tuple(make_node_key(folder, name=n, force=True) for n in node_names))


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn make-certs {server,node,local} --out DIR ...``."""
    parser = argparse.ArgumentParser(
        prog="fedunlearn make-certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    server = modes.add_parser("server", help="CA + SuperLink certificate (coordinator)")
    server.add_argument("--host", action="append", default=[], help="SuperLink host name or IP (repeatable)")
    node = modes.add_parser("node", help="one SuperNode key pair (hospital)")
    node.add_argument("--name", required=True, help="node name, e.g. hospital-a")
    local = modes.add_parser("local", help="everything for a loopback federation")
    local.add_argument("--nodes", type=int, default=3, help="number of SuperNode key pairs (default: %(default)s)")
    for sub in (server, node, local):
        sub.add_argument("--out", required=True, type=Path, help="folder to write into (created, git-ignored)")
        sub.add_argument("--force", action="store_true", help="replace existing files")
    for sub in (server, local):
        sub.add_argument("--days", type=int, default=30, help="certificate validity in days (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.mode == "server":
            written: list[Path] = list(
                vars(
                    make_server_credentials(
                        args.out, hosts=args.host or LOOPBACK_HOSTS, days=args.days, force=args.force
                    )
                ).values()
            )
        elif args.mode == "node":
            key = make_node_key(args.out, name=args.name, force=args.force)
            written = [key.private_key, key.public_key]
        else:
            creds = make_local_credentials(
                args.out, node_names=[f"node-{i}" for i in range(args.nodes)], days=args.days, force=args.force
            )
            written = [*vars(creds.server).values(), *(p for k in creds.nodes for p in (k.private_key, k.public_key))]
    except (FileExistsError, ValueError) as err:
        print(f"fedunlearn make-certs: {err}")
        return 2
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
