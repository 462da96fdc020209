"""Client-side security shared by every zerotrace client: TLS (and mTLS) and a bearer token.

The agent's exporters and the CLI build their gRPC channels through `ClientSecurity`
so that `--tls-ca`, `--tls-cert/--tls-key`, `--token-file` and `$ZEROTRACE_TOKEN`
mean the same everywhere.  It lives in `proto/` because both the agent and the server
packages use it and neither may depend on the other.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc is imported when a channel is made: CLI start-up stays quick
    import grpc

log = logging.getLogger(__name__)

TOKEN_ENV = "ZEROTRACE_TOKEN"


class CredentialsError(ValueError):
    """A certificate, key or token file cannot be used (message names the file)."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CredentialsError(f"cannot read the {what} {path}: {e.strerror or e}") from e


def read_token_file(path: str) -> str:
    """The token in `path`: its first line that is neither blank nor a comment."""
    for line in _read(path, "token file").decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise CredentialsError(f"the token file {path} holds no token")


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches the server: plain or TLS (`ca`), mTLS (`cert`+`key`), token.

    Paths, not contents, so that the object can be logged and passed around; files
    are read when a channel is made.
    """

    ca: str = ""  # PEM CA bundle that signed the server's certificate: turns TLS on
    cert: str = ""  # PEM client certificate (mTLS)
    key: str = ""  # its private key
    token: str = ""  # bearer token, sent as `authorization: Bearer ...`
    server_name: str = ""  # name to check the server certificate against, if not the host

    @classmethod
    def from_options(cls, ca: str | None = None, cert: str | None = None,
                     key: str | None = None, token_file: str | None = None,
                     server_name: str | None = None) -> ClientSecurity:
        """From command-line/config values; the token from `token_file`, else
        `$ZEROTRACE_TOKEN`.  Raises `CredentialsError` on an unusable combination."""
        if bool(cert) != bool(key):
            raise CredentialsError("--tls-cert and --tls-key go together (mTLS client certificate)")
        if cert and not ca:
            raise CredentialsError("a client certificate needs --tls-ca (TLS to the server)")
        token = read_token_file(token_file) if token_file else os.environ.get(TOKEN_ENV, "").strip()
        return cls(ca=ca or "", cert=cert or "", key=key or "", token=token,
                   server_name=server_name or "")

    @property
    def tls(self) -> bool:
        return bool(self.ca)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a channel, or None for a plaintext one."""
        if not self.tls:
            return None
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate"),
            private_key=_read(self.key, "client key") if self.key else None,
            certificate_chain=_read(self.cert, "client certificate") if self.cert else None,
        )

    def channel(self, target: str,
                options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A channel to `target` with these credentials (the token goes per call:
        `metadata()`, because gRPC refuses call credentials on plaintext channels)."""
        import grpc

        opts = list(options)
        creds = self.channel_credentials()
        if creds is None:
            if self.token and not _loopback_target(target):
                log.warning("sending a bearer token to %s without TLS: anyone on the path "
                            "can read it (give --tls-ca)", target)
            return grpc.insecure_channel(target, options=opts)
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(target, creds, options=opts)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def add_client_options(p: argparse.ArgumentParser) -> None:
    """--tls-ca/--tls-cert/--tls-key/--tls-server-name/--token-file, the same in every
    client command (the agent, the query commands)."""
    g = p.add_argument_group("security")
    g.add_argument("--tls-ca", metavar="FILE",
                   help="speak TLS; trust server certificates signed by this CA (PEM)")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for mTLS")
    g.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="name to check the server certificate against (default: the host)")
    g.add_argument("--token-file", metavar="FILE",
                   help="file holding the bearer token (default: $ZEROTRACE_TOKEN)")


def _loopback_target(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]") if ":" in target else target
    return host in ("localhost", "::1") or host.startswith("127.")
