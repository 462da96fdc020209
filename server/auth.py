"""Who may talk to the server: TLS/mTLS credentials, bearer tokens with roles, exposure.

- `server_credentials(cert, key, ca)`: TLS on the gRPC port; with a CA, clients must
  present a certificate it signed (mTLS).
- `TokenTable` (`--token-file`): one `ROLE TOKEN [NAME]` per line, ROLE `ingest` or
  `read`; `#` comments and blank lines allowed; re-read by `reload()` (SIGHUP).
- `AuthInterceptor`: every RPC must carry `authorization: Bearer TOKEN` of a token
  whose role covers the method (ingest: zerotrace Push and OTLP Export; read: every
  query).  No or unknown token -> UNAUTHENTICATED, wrong role -> PERMISSION_DENIED;
  neither message says anything about the tokens that exist.  The caller's identity
  (the token's NAME, else `ROLE#N`) is what per-sender admission is keyed on, so a
  client cannot claim another sender's share by declaring its name.
- `exposure_problem()`: a non-loopback listen address with neither TLS nor tokens is
  refused unless `--insecure`.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)

ROLES = ("ingest", "read")
MIN_TOKEN_CHARS = 16  # a short token can be guessed over the network

# The role each service needs.  A method of any other service is refused: a service
# added later must be given a role here before anyone can call it with tokens on.
# The gRPC health checking protocol: open without a token (see AuthInterceptor).
HEALTH_SERVICE = "grpc.health.v1.Health"

SERVICE_ROLES = {
    "zerotrace.v1.IngestService": "ingest",
    "opentelemetry.proto.collector.trace.v1.TraceService": "ingest",
    "zerotrace.v1.QueryService": "read",
}

# The authenticated caller of the RPC being served ("" when tokens are off).  Set by
# the interceptor in the worker thread that runs the method.
_identity: contextvars.ContextVar[str] = contextvars.ContextVar("zerotrace_identity", default="")


def identity() -> str:
    """The authenticated identity of the current RPC, "" when tokens are off."""
    return _identity.get()


class AuthConfigError(ValueError):
    """A token file or TLS file cannot be used (the message names the file and line,
    never a token)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes  # sha256 of the token: comparisons run on fixed-length digests
    role: str
    name: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str, source: str = "token file") -> list[_Entry]:
    """Entries of a token file's text; raises `AuthConfigError` naming the bad line."""
    entries: list[_Entry] = []
    counts = dict.fromkeys(ROLES, 0)
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or parts[0] not in ROLES:
            raise AuthConfigError(f"{source} line {lineno}: expected 'ROLE TOKEN [NAME]' "
                                 f"with ROLE one of {', '.join(ROLES)}")
        role, token = parts[0], parts[1]
        if len(token) < MIN_TOKEN_CHARS:
            raise AuthConfigError(f"{source} line {lineno}: token shorter than "
                                 f"{MIN_TOKEN_CHARS} characters")
        digest = _digest(token)
        if (digest, role) in {(e.digest, e.role) for e in entries}:
            raise AuthConfigError(f"{source} line {lineno}: same token and role twice")
        counts[role] += 1
        name = parts[2] if len(parts) == 3 else f"{role}#{counts[role]}"
        entries.append(_Entry(digest, role, name))
    if not entries:
        raise AuthConfigError(f"{source} holds no token")
    return entries


class TokenTable:
    """The tokens of `--token-file`; `reload()` swaps them atomically (SIGHUP)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: list[_Entry] = self._load()
        self._lock = threading.Lock()

    def _load(self) -> list[_Entry]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise AuthConfigError(f"cannot read the token file {self.path}: {e}") from e
        return parse_tokens(text, self.path)

    def reload(self) -> bool:
        """Re-read the file; on error keep the tokens in force and say why (False)."""
        try:
            entries = self._load()
        except AuthConfigError as e:
            log.error("token file not reloaded, the previous tokens stay in force: %s", e)
            return False
        with self._lock:
            self._entries = entries
        log.info("token file %s reloaded: %d token(s)", self.path, len(entries))
        return True

    def lookup(self, token: str) -> list[_Entry]:
        """The entries (one per role) of `token`.  Every entry is compared, each in
        constant time, so the time taken says nothing about which token matched."""
        d = _digest(token)
        with self._lock:
            entries = self._entries
        found = []
        for e in entries:
            if hmac.compare_digest(e.digest, d):
                found.append(e)
        return found

    def __len__(self) -> int:
        return len(self._entries)


# Refusals say what is wrong with the call, never which tokens or roles exist.
NO_TOKEN = ("authentication required: send 'authorization: Bearer TOKEN' "
            "(--token-file or $ZEROTRACE_TOKEN)")
BAD_TOKEN = "authentication failed: token not accepted"


def _bearer_value(value: str | bytes | None) -> str | None:
    """The token of an `authorization` value; "" when it is not `Bearer TOKEN`, None
    when there is no value."""
    if value is None:
        return None
    text = value if isinstance(value, str) else value.decode("latin-1")
    scheme, _, token = text.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _metadata_value(metadata: tuple | None, key: str = "authorization") -> str | bytes | None:
    for k, v in metadata or ():
        if k == key:
            return v
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of checking a caller: allowed as `identity`, or refused."""

    identity: str = ""
    code: grpc.StatusCode | None = None  # None: allowed
    message: str = ""

    @property
    def allowed(self) -> bool:
        return self.code is None

    @property
    def http_status(self) -> int:
        """The HTTP status of the refusal: 401 (send `WWW-Authenticate: Bearer`), 403."""
        if self.code is None:
            return 200
        return 401 if self.code == grpc.StatusCode.UNAUTHENTICATED else 403


def authorize(tokens: TokenTable, authorization: str | bytes | None, role: str | None,
              what: str) -> Decision:
    """Check an `authorization` value (gRPC metadata or HTTP header) for `role`;
    `what` names the method or path in a PERMISSION_DENIED message.  The same rules
    and messages for every port: an HTTP API calls this with role "read"."""
    token = _bearer_value(authorization)
    if not token:
        return Decision(code=grpc.StatusCode.UNAUTHENTICATED, message=NO_TOKEN)
    entries = tokens.lookup(token)
    if not entries:
        return Decision(code=grpc.StatusCode.UNAUTHENTICATED, message=BAD_TOKEN)
    match = next((e for e in entries if e.role == role), None) if role else None
    if match is None:
        need = f"needs the {role!r} role" if role else "is not open to token holders"
        return Decision(code=grpc.StatusCode.PERMISSION_DENIED,
                        message=f"permission denied: {what} {need}; this token does not have it")
    return Decision(identity=match.name)


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code`."""

    def deny(_request_or_iterator, context: grpc.ServicerContext):
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    # The request is not decoded at all: a refused caller costs no deserialization.
    return grpc.unary_unary_rpc_method_handler(deny)


def _as(handler: grpc.RpcMethodHandler, who: str) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour run under `identity() == who`."""

    def wrap(behaviour: Callable | None) -> Callable | None:
        if behaviour is None:
            return None

        def run(request, context):
            tok = _identity.set(who)
            try:
                return behaviour(request, context)
            finally:
                _identity.reset(tok)

        return run

    return handler._replace(
        unary_unary=wrap(handler.unary_unary),
        unary_stream=wrap(handler.unary_stream),
        stream_unary=wrap(handler.stream_unary),
        stream_stream=wrap(handler.stream_stream),
    )


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token and its role before any method runs."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens
        self.refused = {"unauthenticated": 0, "permission_denied": 0}

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED, nothing to protect
        method = handler_call_details.method
        service = method.lstrip("/").rpartition("/")[0]
        if service == HEALTH_SERVICE:
            return handler  # kubelet's gRPC probe sends no token; it learns only "SERVING"
        need = SERVICE_ROLES.get(service)
        d = authorize(self.tokens, _metadata_value(handler_call_details.invocation_metadata),
                      need, method)
        if not d.allowed:
            self.refused[d.code.name.lower()] += 1
            return _refusal(handler, d.code, d.message)
        return _as(handler, d.identity)


def certificate_name(context: grpc.ServicerContext) -> str:
    """The name the caller's verified client certificate carries (mTLS), else ""."""
    try:
        names = context.peer_identities()
    except Exception:  # noqa: BLE001 - no TLS, or a context without auth data
        return ""
    return names[0].decode("utf-8", "replace") if names else ""


def server_credentials(cert: str, key: str, ca: str = "") -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with `ca`, client certificates are required."""
    if not cert or not key:
        raise AuthConfigError("TLS needs both --tls-cert and --tls-key")

    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise AuthConfigError(f"cannot read the TLS {what} {path}: {e.strerror or e}") from e

    return grpc.ssl_server_credentials(
        [(read(key, "key"), read(cert, "certificate"))],
        root_certificates=read(ca, "CA certificate") if ca else None,
        require_client_auth=bool(ca),
    )


def http_tls_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """A server-side TLS context for the HTTP ports (/metrics, the Tempo/Jaeger and
    OTLP/HTTP APIs) from the same files as the gRPC port: --tls-cert/--tls-key, and
    with --tls-ca client certificates are required there too."""
    if not cert or not key:
        raise AuthConfigError("TLS needs both --tls-cert and --tls-key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if ca:
            ctx.load_verify_locations(cafile=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise AuthConfigError(f"cannot use the TLS files {cert} / {key}"
                              f"{' / ' + ca if ca else ''}: {e}") from e
    return ctx


def serve_tls(httpd: socketserver.BaseServer, ctx: ssl.SSLContext) -> None:
    """Make `httpd` (a stdlib socketserver, before it serves) speak only TLS.

    The handshake is left to each connection's own thread (do_handshake_on_connect
    off): done in accept(), a client that connects and sends nothing would hold the
    accepting thread and with it the port.  A plain-HTTP client fails its handshake
    and gets nothing."""
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True,
                                   do_handshake_on_connect=False)


def is_loopback(listen: str) -> bool:
    """True when HOST of `listen` (HOST:PORT) only ever means this machine."""
    host = listen.rpartition(":")[0].strip("[]")
    if not host:
        return False  # ":4317" binds every address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def exposure_problem(listen: str, tls: bool, tokens: bool, insecure: bool) -> str:
    """Why serving on `listen` is refused, or "" when it is allowed."""
    if tls or tokens or insecure or is_loopback(listen):
        return ""
    return (f"refusing to listen on {listen} without TLS or tokens (anyone who reaches it "
            "could read every trace); give --tls-cert/--tls-key and/or --token-file, "
            "or --insecure to accept that")
