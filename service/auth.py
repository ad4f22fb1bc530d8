"""Who may call what: bearer JWTs (HS256 with a shared secret, RS256/ES256 with a JWKS), the tenant and scopes
they carry, and the per-tenant rate and watch-stream limits. `Gatekeeper.admit` runs inside ServiceInterceptor
before any handler, so gRPC clients, REST through Envoy and Envoy's gRPC passthrough are checked alike; the
principal travels to the servicer in a ContextVar. The live endpoint (WebSocket, REST watch) admits through the
same Gatekeeper with `admit_call`, so its streams count against the same per-tenant caps.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import httpx
import jwt

from orchestrator.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from orchestrator.settings import AuthSettings, Settings
from service.gen.orchestrator.v1 import orchestrator_service_pb2 as pb
from service.limits import Slots, TokenBuckets

logger = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
MAX_TOKEN_CHARS = 8 * 1024
MAX_TENANT_CHARS = 200  # the store's tenant column
MAX_JWKS_BYTES = 1024 * 1024
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_MIN_REFRESH_SECONDS = 30.0  # an unknown kid refetches the JWKS at most this often
JWKS_ALGORITHMS = ("RS256", "ES256")


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Rule:
    access: Access
    stream: bool = False


# Every OrchestratorService RPC but Health, by the scope and rate bucket it needs (a test checks none is missing).
# A method not listed here and not public needs the write scope: new RPCs are closed until classified.
RULES: dict[str, Rule] = {
    f"/{SERVICE}/ExecuteWorkflow": Rule(Access.WRITE),
    f"/{SERVICE}/CancelWorkflow": Rule(Access.WRITE),
    f"/{SERVICE}/GetWorkflowStatus": Rule(Access.READ),
    f"/{SERVICE}/WatchWorkflow": Rule(Access.READ, stream=True),
    f"/{SERVICE}/ListWorkflows": Rule(Access.READ),
    f"/{SERVICE}/ListWorkflowTypes": Rule(Access.READ),
}
_UNLISTED = Rule(Access.WRITE)

# Probes and load balancers call health without credentials. Server reflection describes only the public
# contract (the protos are published) and returns no tenant data; grpc.aio passes its stream-stream handler
# through ServiceInterceptor untouched, and it is listed here so that stays true if that ever changes.
PUBLIC_METHODS = frozenset({f"/{SERVICE}/Health"})
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_public(method: str) -> bool:
    return method in PUBLIC_METHODS or method.startswith(PUBLIC_PREFIXES)


@dataclass(frozen=True)
class Principal:
    """The caller of the current RPC: its tenant ("" with auth off), its scopes, and the key its limits use."""

    tenant: str
    scopes: frozenset[str]
    limit_key: str


_principal: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    """The principal Gatekeeper.admit set for this RPC; None outside an admitted RPC (health, tests)."""
    return _principal.get()


class JwksKeys:
    """The RS256/ES256 public keys of a JWKS file or URL, cached for `jwks_cache_seconds`. A token naming an
    unknown kid refetches early (key rotation), at most every JWKS_MIN_REFRESH_SECONDS. When a refresh fails the
    last good keys stay in use."""

    def __init__(self, auth: AuthSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._file = auth.jwks_file
        self._url = auth.jwks_url
        self._ttl = auth.jwks_cache_seconds
        self._clock = clock
        self._keys: list[jwt.PyJWK] | None = None
        self._loaded_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def source(self) -> str:
        if self._file is not None:
            return str(self._file)
        parts = urlsplit(self._url or "")
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        key = _pick(await self._current(), kid, algorithm)
        if key is None and self._clock() - self._attempted_at >= min(JWKS_MIN_REFRESH_SECONDS, self._ttl):
            key = _pick(await self._current(force=True), kid, algorithm)
        if key is None:
            raise Unauthenticated(
                "no key of the configured JWKS verifies this token (unknown key id or algorithm)", "TOKEN_KEY_UNKNOWN"
            )
        return key

    async def _current(self, *, force: bool = False) -> list[jwt.PyJWK]:
        if self._keys is not None and not force and self._clock() - self._loaded_at < self._ttl:
            return self._keys
        asked = self._clock()
        async with self._lock:
            if self._keys is not None and self._attempted_at >= asked:
                return self._keys  # another call refreshed while this one waited
            self._attempted_at = self._clock()
            try:
                keys = _parse_jwks(await self._read())
            except Exception as exc:
                if self._keys is None:
                    logger.error("cannot load the JWKS from %s: %s", self.source, exc)
                    raise Unavailable("the keys that verify tokens cannot be loaded right now; retry later") from None
                logger.warning("cannot refresh the JWKS from %s (%s); keeping the keys loaded before", self.source, exc)
                # Retry after the minimum interval rather than on every call.
                self._loaded_at = self._clock() - self._ttl + min(JWKS_MIN_REFRESH_SECONDS, self._ttl)
                return self._keys
            self._keys, self._loaded_at = keys, self._clock()
            return keys

    async def _read(self) -> bytes:
        if self._file is not None:
            return self._file.read_bytes()
        assert self._url is not None
        async with (
            httpx.AsyncClient(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False) as client,
            client.stream("GET", self._url, headers={"accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


def _parse_jwks(raw: bytes) -> list[jwt.PyJWK]:
    try:
        keys = [k for k in jwt.PyJWKSet.from_json(raw.decode()) if k.algorithm_name in JWKS_ALGORITHMS]
    except (ValueError, jwt.PyJWTError) as exc:
        raise ValueError(f"not a usable JWKS ({type(exc).__name__})") from None
    if not keys:
        raise ValueError(f"no {' or '.join(JWKS_ALGORITHMS)} key in the JWKS")
    return keys


def _pick(keys: list[jwt.PyJWK], kid: str | None, algorithm: str) -> jwt.PyJWK | None:
    usable = [k for k in keys if k.algorithm_name == algorithm and k.public_key_use in (None, "sig")]
    if kid is not None:
        usable = [k for k in usable if k.key_id == kid]
    # Without a kid, only an unambiguous key will do.
    return usable[0] if len(usable) == 1 else None


class TokenVerifier:
    """Checks a JWT's signature, expiry (with clock skew), issuer and audience; returns its claims. The key is
    chosen by the configuration, and each key verifies only its own algorithm (no HS/RS confusion)."""

    def __init__(self, auth: AuthSettings) -> None:
        self._auth = auth
        self._secret = auth.hs256_secret.get_secret_value().encode() if auth.hs256_secret else None
        self._jwks = JwksKeys(auth) if auth.jwks_file or auth.jwks_url else None
        self.algorithms = (("HS256",) if self._secret else ()) + (JWKS_ALGORITHMS if self._jwks else ())

    @property
    def jwks(self) -> JwksKeys | None:
        return self._jwks

    async def claims(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters", "TOKEN_MALFORMED")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's key id (kid) is not a string", "TOKEN_MALFORMED")
        key: bytes | jwt.PyJWK
        if algorithm == "HS256" and self._secret is not None:
            key = self._secret
        elif algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            key = await self._jwks.key_for(kid, str(algorithm))
        else:
            raise Unauthenticated(
                f"the token's signing algorithm is not accepted here; accepted: {', '.join(self.algorithms)}",
                "TOKEN_ALGORITHM_NOT_ALLOWED",
            )
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=self._auth.audience,
                issuer=self._auth.issuer,
                leeway=self._auth.clock_skew_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise _unauthenticated(exc) from None


def _unauthenticated(exc: jwt.PyJWTError) -> Unauthenticated:
    """A clear, fixed message per failure: PyJWT's own texts are not passed on."""
    match exc:
        case jwt.ExpiredSignatureError():
            return Unauthenticated("the token has expired", "TOKEN_EXPIRED")
        case jwt.ImmatureSignatureError():
            return Unauthenticated("the token is not valid yet (nbf or iat in the future)", "TOKEN_NOT_YET_VALID")
        case jwt.InvalidIssuerError():
            return Unauthenticated(
                "the token's issuer (iss) is not the one this service trusts", "TOKEN_ISSUER_INVALID"
            )
        case jwt.InvalidAudienceError():
            return Unauthenticated("the token's audience (aud) is not this service", "TOKEN_AUDIENCE_INVALID")
        case jwt.MissingRequiredClaimError(claim="iss"):
            return Unauthenticated("the token has no issuer (iss)", "TOKEN_ISSUER_INVALID")
        case jwt.MissingRequiredClaimError(claim="aud"):
            return Unauthenticated("the token has no audience (aud)", "TOKEN_AUDIENCE_INVALID")
        case jwt.MissingRequiredClaimError(claim="exp"):
            return Unauthenticated("the token has no expiry (exp)", "TOKEN_CLAIMS_INVALID")
        case jwt.InvalidSignatureError():
            return Unauthenticated("the token's signature does not verify", "TOKEN_SIGNATURE_INVALID")
        case jwt.DecodeError():
            return Unauthenticated("the bearer token is not a well-formed JWT", "TOKEN_MALFORMED")
        case _:
            return Unauthenticated("the token's claims are not valid", "TOKEN_CLAIMS_INVALID")


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        raise Unauthenticated(
            "this call needs a bearer token: send the 'authorization: Bearer <JWT>' header or metadata",
            "TOKEN_MISSING",
        )
    if len(values) > 1 or not isinstance(values[0], str):
        raise Unauthenticated("send exactly one authorization header", "TOKEN_MALFORMED")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the authorization header must be 'Bearer <JWT>'", "TOKEN_MALFORMED")
    return token


def peer_address(peer: str) -> str:
    """The client's address without its port: 'ipv4:1.2.3.4:5' -> '1.2.3.4', 'ipv6:[::1]:5' -> '::1'."""
    kind, _, rest = unquote(peer or "").partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer or "unknown"


class Gatekeeper:
    """Admission of one RPC: authenticate, check the scope, take a rate token, hold a stream slot."""

    def __init__(self, settings: Settings) -> None:
        self._auth = settings.auth
        self.verifier = TokenVerifier(settings.auth) if settings.auth.enabled else None
        self._buckets = {
            Access.READ: TokenBuckets(settings.read_rate_per_second, settings.read_burst),
            Access.WRITE: TokenBuckets(settings.write_rate_per_second, settings.write_burst),
        }
        self._streams = Slots(settings.max_watch_streams_per_tenant)

    def describe(self) -> str:
        """For the start-up log line; names no secret."""
        if self.verifier is None:
            return "authentication OFF (every caller is the same tenant; for local use only)"
        jwks = self.verifier.jwks
        return (
            f"authentication on: {', '.join(self.verifier.algorithms)}"
            f"{f' (JWKS {jwks.source})' if jwks else ''}, issuer {self._auth.issuer!r}, "
            f"audience {self._auth.audience!r}, tenant claim {self._auth.tenant_claim!r}"
        )

    @asynccontextmanager
    async def admit(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        async with self.admit_call(method, context.invocation_metadata(), peer_address(context.peer())):
            yield

    @asynccontextmanager
    async def admit_call(
        self, method: str, metadata: Iterable[tuple[str, Any]] | None, client_address: str
    ) -> AsyncIterator[Principal | None]:
        """`admit` for any transport: the gRPC interceptor and the live HTTP/WebSocket endpoint (service/live.py)
        admit through here, so both share one set of rules, rate buckets and stream slots. Yields the principal
        (None for a public method); `metadata` holds the authorization header, `client_address` keys the limits
        when auth is off."""
        if is_public(method):
            yield None
            return
        rule = RULES.get(method, _UNLISTED)
        principal = await self._authenticate(metadata, client_address)
        # Each RPC runs in its own task, so the value cannot leak into another call.
        _principal.set(principal)
        scope = self._auth.write_scope if rule.access is Access.WRITE else self._auth.read_scope
        if scope not in principal.scopes:
            raise PermissionDenied(f"this call needs the {scope!r} scope, which the token does not grant")
        buckets = self._buckets[rule.access]
        wait = buckets.take(principal.limit_key)
        if wait:
            raise ResourceExhausted(
                f"too many {rule.access.value} calls: the limit is {buckets.rate:g} per second with bursts of "
                f"{buckets.burst}; retry in {wait:.2f} s",
                retry_after_seconds=wait,
                reason="RATE_LIMITED",
            )
        if not rule.stream:
            yield principal
            return
        if not self._streams.acquire(principal.limit_key):
            raise ResourceExhausted(
                f"too many open watch streams: the limit is {self._streams.limit}; close one first",
                retry_after_seconds=1.0,
                reason="TOO_MANY_WATCH_STREAMS",
            )
        try:
            yield principal
        finally:
            self._streams.release(principal.limit_key)

    async def _authenticate(self, metadata: Iterable[tuple[str, Any]] | None, client_address: str) -> Principal:
        if self.verifier is None:
            everything = frozenset({self._auth.read_scope, self._auth.write_scope})
            return Principal("", everything, "address:" + client_address)
        claims = await self.verifier.claims(bearer_token(metadata))
        tenant = claims.get(self._auth.tenant_claim)
        if not isinstance(tenant, str) or not tenant or len(tenant) > MAX_TENANT_CHARS or not tenant.isprintable():
            raise Unauthenticated(
                f"the token has no usable {self._auth.tenant_claim!r} claim naming its tenant "
                f"(a string of 1-{MAX_TENANT_CHARS} printable characters)",
                "TOKEN_CLAIMS_INVALID",
            )
        return Principal(tenant, self._scopes(claims), "tenant:" + tenant)

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        scopes: set[str] = set()
        for name in self._auth.scope_claims:
            value = claims.get(name)
            if isinstance(value, str):
                scopes.update(value.split())
            elif isinstance(value, list):
                scopes.update(v for v in value if isinstance(v, str))
        return frozenset(scopes)
