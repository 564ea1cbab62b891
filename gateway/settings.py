"""TOML configuration -> frozen, typed settings.

Every key of docs/configuration.md is a field below, with the default shown there and in
gateway.toml.example (tests/test_docs.py keeps the three equal). Loading is strict:
an unknown key, a wrong type or a bad value is a problem that names its key
(``routes[2].access: must be one of public, guest, user``), and all problems of a file are
reported together in one :class:`SettingsError`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from gateway.globs import InvalidGlob, compile_glob
from gateway.vocabulary import RouteAccess, SendStyle, UnauthenticatedForm

# Words only the config speaks; the shared ones are in gateway/vocabulary.py. A field typed
# with one of these accepts exactly its words (``_convert``).
SameSite = Literal["lax", "strict", "none"]
GuestMode = Literal["backend", "local"]
StateBackend = Literal["memory", "redis"]
_ALLOWED_HOST = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(:[0-9]{1,5})?"
                           r"|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class SettingsError(Exception):
    """A configuration that cannot be used; ``problems`` has one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    reserved_prefix: str = "/__gateway"
    # Peers (IPs or CIDR networks) whose X-Forwarded-* headers are believed
    # (docs/configuration.md#server): without it, client copies are always replaced (the
    # safe default).
    trusted_proxies: tuple[str, ...] = ()
    # Limits on what one client may send (docs/limits.md). Head size and header count are
    # checked by the app under any ASGI server; the timeouts, and refusing an oversized head
    # before it is buffered, need the server: `gateway serve` enforces them.
    max_head_bytes: int = 65_536
    max_headers: int = 100
    max_body_bytes: int = 104_857_600
    head_timeout_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    # Host header values accepted: a name or IP (any port unless one is given), or
    # "*.example.com" for its subdomains; empty = any well-formed host. A malformed Host
    # (userinfo, spaces, a path) is refused with 400 whatever this says.
    allowed_hosts: tuple[str, ...] = ()
    # A second listener for readiness and metrics (0 = none: they stay on the main port).
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    # Paths holding %2F or %5C (also double-encoded): refused with 400 unless true; then
    # routed as the stricter of their encoded and decoded readings (gateway/paths.py).
    allow_encoded_slash: bool = False


@dataclass(frozen=True)
class UpstreamSettings:
    url: str = "http://127.0.0.1:8000"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_connections: int = 256
    # Upstream connections one client address may hold at once; more wait up to
    # connect_timeout_s for one of their own client's, then get 429 (0 = no bound).
    max_connections_per_client: int = 64


@dataclass(frozen=True)
class ValidateSettings:
    path: str = "/auth/me"
    method: str = "GET"
    user_path: str = "data"
    id_field: str = "id"
    roles_field: str = "roles"


@dataclass(frozen=True)
class RefreshSettings:
    path: str = "/auth/refresh"
    send: SendStyle = "access_header"
    body_field: str = "refresh"
    access_path: str = "data.accessToken"
    refresh_path: str = "data.refreshToken"
    proactive_s: float = 0.0
    clock_skew_s: float = 30.0
    grace_s: float = 30.0


@dataclass(frozen=True)
class LoginCaptureSettings:
    path: str = ""
    access_path: str = "data.accessToken"
    refresh_path: str = "data.refreshToken"
    strip_tokens: bool = True


@dataclass(frozen=True)
class LogoutSettings:
    path: str = ""
    send: SendStyle = "refresh_body"
    body_field: str = "refresh"
    backend_path: str = ""


@dataclass(frozen=True)
class AuthSettings:
    url: str = ""
    scheme: str = "Bearer"
    cache_ttl_s: float = 2.0
    # How long a rejected token is remembered, so a flood of one bogus token costs one
    # backend call; capped at cache_ttl_s (gateway/validation.py).
    invalid_cache_ttl_s: float = 2.0
    cache_max_entries: int = 100_000
    retries: int = 2
    retry_backoff_s: float = 0.1
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    login: LoginCaptureSettings = field(default_factory=LoginCaptureSettings)
    logout: LogoutSettings = field(default_factory=LogoutSettings)


@dataclass(frozen=True)
class GuestSettings:
    enabled: bool = False
    mode: GuestMode = "backend"
    path: str = "/auth/guest"
    token_path: str = "data.accessToken"
    username: str = ""
    password_env: str = ""
    secret_env: str = "GATEWAY_GUEST_SECRET"
    ttl_s: float = 3600.0
    # Backend-mode flood bounds (docs/configuration.md#guest, docs/behaviour.md#guests).
    max_concurrent: int = 16
    per_client_per_minute: int = 30
    per_minute: int = 1200


@dataclass(frozen=True)
class CookieSettings:
    access: str = "userToken"
    refresh: str = "refreshToken"
    guest: str = "guestToken"
    path: str = "/"
    domain: str = ""
    secure: bool = True
    http_only: bool = True
    same_site: SameSite = "lax"
    access_max_age_s: int = 604_800
    refresh_max_age_s: int = 604_800
    guest_max_age_s: int = 3600
    # Keep the access cookie in the Cookie header sent upstream, for apps that read it
    # (gateway/owncookies.py); the refresh and guest cookies are never forwarded.
    forward_access: bool = False


@dataclass(frozen=True)
class LoginRedirectSettings:
    url: str = "/login"
    return_param: str = "next"


@dataclass(frozen=True)
class RouteSettings:
    """One ``[[routes]]`` row as configured (the router builds its runtime ``Route`` from
    it: gateway/routes.py). Loaded, ``methods`` are upper-case."""

    match: str = ""
    access: RouteAccess = "public"
    methods: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    unauthenticated: UnauthenticatedForm = "auto"


@dataclass(frozen=True)
class DefaultRouteSettings:
    """``[default_route]``: the row for paths no ``[[routes]]`` row matches."""

    access: RouteAccess = "user"
    unauthenticated: UnauthenticatedForm = "auto"


@dataclass(frozen=True)
class AuditSettings:
    sink: str = "stdout"
    log_cache_hits: bool = False  # auth.validated with cache = "hit": counted, written only if true
    flush_interval_s: float = 0.5  # lines are buffered this long at most; 0 = write each at once


@dataclass(frozen=True)
class AccessLogSettings:
    # One JSON line per HTTP request (docs/deployment.md#access-log); off by default, as the
    # audit stream and the metrics already say what an operator must know.
    enabled: bool = False
    sink: str = "stdout"


@dataclass(frozen=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool = True
    allow_methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = ("authorization", "content-type", "x-requested-with")
    expose_headers: tuple[str, ...] = ("x-refreshed-token", "x-request-id")
    max_age_s: int = 600


@dataclass(frozen=True)
class CsrfSettings:
    """Cross-site request refusal (gateway/csrf.py). On by default."""

    enabled: bool = True
    # Origins accepted as the request's own, besides [cors] allow_origins: e.g. the public
    # https origin when TLS ends at a proxy that is not in server.trusted_proxies.
    trusted_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardAuthSettings:
    """``<reserved_prefix>/auth`` for a proxy in front (docs/forward-auth.md)."""

    enabled: bool = False
    # Peers (IPs or CIDR networks) allowed to ask; anyone else gets 404.
    trusted: tuple[str, ...] = ("127.0.0.1/32", "::1/128")


@dataclass(frozen=True)
class StateSettings:
    backend: StateBackend = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_env: str = "GATEWAY_STATE_KEY"
    password_env: str = ""  # environment variable holding the Redis password (AUTH)
    tls_ca_file: str = ""  # rediss://: CA bundle that signed the server's certificate
    timeout_s: float = 2.0  # per operation; a longer event-loop stall than this is an incident
    recheck_s: float = 1.0  # while degraded: probe Redis about this often (jittered)
    settle_s: float = 15.0  # after an incident: rejections are 503, not logouts, this long
    sentinels: tuple[str, ...] = ()  # "host:port" of Redis Sentinels; the master comes from them
    sentinel_service: str = "mymaster"  # the master's name in the Sentinels' configuration


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    guest: GuestSettings = field(default_factory=GuestSettings)
    cookies: CookieSettings = field(default_factory=CookieSettings)
    login: LoginRedirectSettings = field(default_factory=LoginRedirectSettings)
    routes: tuple[RouteSettings, ...] = ()
    # [default_route] as a row that matches every path.
    default_route: RouteSettings = field(
        default_factory=lambda: RouteSettings(match="/**", access="user")
    )
    audit: AuditSettings = field(default_factory=AuditSettings)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    cors: CorsSettings | None = None
    csrf: CsrfSettings = field(default_factory=CsrfSettings)
    forward_auth: ForwardAuthSettings = field(default_factory=ForwardAuthSettings)
    state: StateSettings = field(default_factory=StateSettings)

    @property
    def auth_url(self) -> str:
        """Base URL of the auth endpoints (``auth.url``, else ``upstream.url``)."""
        return (self.auth.url or self.upstream.url).rstrip("/")


# --------------------------------------------------------------------------- loading


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a TOML file; raises :class:`SettingsError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read config file ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise SettingsError([f"{path}: not valid UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{path}: not valid TOML ({exc})"]) from None
    return settings_from_mapping(data)


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate an already-parsed TOML document; raises :class:`SettingsError`."""
    problems: list[str] = []
    sections = dict(data)
    raw_routes = sections.pop("routes", [])
    raw_default = sections.pop("default_route", {})
    raw_cors = sections.pop("cors", None)
    upstream = sections.get("upstream")
    if upstream is None or (isinstance(upstream, dict) and "url" not in upstream):
        problems.append("upstream.url: required")

    base = _build(Settings, sections, "", problems)
    routes = _build_routes(raw_routes, problems)
    default_route = _build_default_route(raw_default, problems)
    cors = None
    if raw_cors is not None:
        cors = _build(CorsSettings, raw_cors, "cors", problems)
    settings = dataclasses.replace(base, routes=routes, default_route=default_route, cors=cors)
    _check(settings, problems)
    if problems:
        raise SettingsError(problems)
    return settings


_T = TypeVar("_T")


def _build(
    cls: type[_T],
    data: object,
    prefix: str,
    problems: list[str],
) -> _T:
    """Build dataclass ``cls`` from a TOML table, type-checking each key."""
    if not isinstance(data, dict):
        problems.append(f"{prefix}: must be a table")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in known:
            problems.append(f"{name}: unknown key")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(typing.cast(type[Any], hint), value, name, problems)
            continue
        converted = _convert(hint, value, name, problems)
        if converted is not _INVALID:
            values[key] = converted
    return cls(**values)


_INVALID = object()


def _convert(hint: Any, value: object, name: str, problems: list[str]) -> object:
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{name}: must be true or false")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{name}: must be an integer")
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{name}: must be a number")
    elif hint is str:
        if isinstance(value, str):
            return value
        problems.append(f"{name}: must be a string")
    elif origin is Literal:
        choices = typing.get_args(hint)
        if not isinstance(value, str):
            problems.append(f"{name}: must be a string")
        elif value in choices:
            return value
        else:
            problems.append(f"{name}: must be one of {', '.join(choices)}")
    elif origin is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        problems.append(f"{name}: must be a list of strings")
    elif origin in (types.UnionType, typing.Union):  # pragma: no cover - no such fields yet
        raise TypeError(f"unsupported settings type for {name}")
    else:  # pragma: no cover - a programming error, not a config error
        raise TypeError(f"unsupported settings type {hint!r} for {name}")
    return _INVALID


def _build_routes(raw: object, problems: list[str]) -> tuple[RouteSettings, ...]:
    if not isinstance(raw, list):
        problems.append("routes: must be an array of tables ([[routes]])")
        return ()
    routes: list[RouteSettings] = []
    for index, item in enumerate(raw):
        prefix = f"routes[{index}]"
        spec = _build(RouteSettings, item, prefix, problems)
        if isinstance(item, dict) and not item.get("match"):
            problems.append(f"{prefix}.match: required")
        routes.append(_route(spec, prefix, problems))
    return tuple(routes)


def _build_default_route(raw: object, problems: list[str]) -> RouteSettings:
    spec = _build(DefaultRouteSettings, raw, "default_route", problems)
    route_spec = RouteSettings(match="/**", access=spec.access,
                               unauthenticated=spec.unauthenticated)
    return _route(route_spec, "default_route", problems)


def _route(spec: RouteSettings, prefix: str, problems: list[str]) -> RouteSettings:
    """The row checked (``access`` and ``unauthenticated`` were, by their types), with its
    methods upper-cased."""
    if spec.match:
        try:
            compile_glob(spec.match)
        except InvalidGlob as exc:
            problems.append(f"{prefix}.match: {exc}")
    methods = tuple(m.upper() for m in spec.methods)
    for method in methods:
        if not method.isalpha() or not method.isascii():
            problems.append(f"{prefix}.methods: {method!r} is not an HTTP method")
    if spec.roles and spec.access != "user":
        problems.append(f'{prefix}.roles: only allowed with access = "user"')
    return dataclasses.replace(spec, methods=methods)


# --------------------------------------------------------------------------- value checks


def _one_of(value: str, choices: tuple[str, ...], name: str, problems: list[str]) -> None:
    if value not in choices:
        problems.append(f"{name}: must be one of {', '.join(choices)}")


def _split(value: str, name: str, problems: list[str]) -> SplitResult | None:
    try:
        return urlsplit(value)
    except ValueError:
        problems.append(f"{name}: not a valid URL")
        return None


def _http_url(value: str, name: str, problems: list[str], *, allow_empty: bool = False) -> None:
    if allow_empty and value == "":
        return
    parts = _split(value, name, problems)
    if parts is None:
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{name}: must be an http:// or https:// URL with a host")
        return
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        problems.append(f"{name}: has an invalid port")
    if parts.query or parts.fragment:
        problems.append(f"{name}: must not have a query or fragment")


def _abs_path(value: str, name: str, problems: list[str], *, allow_empty: bool = False) -> None:
    if allow_empty and value == "":
        return
    if not value.startswith("/") or value.startswith("//") or any(c in value for c in " ?#\\"):
        problems.append(f"{name}: must be an absolute path starting with a single /")


def _range(
    value: float, name: str, problems: list[str], *, low: float, high: float | None = None,
    low_inclusive: bool = True,
) -> None:
    if not math.isfinite(value):
        problems.append(f"{name}: must be a number")
        return
    too_low = value < low if low_inclusive else value <= low
    if too_low or (high is not None and value > high):
        bound = f">= {low:g}" if low_inclusive else f"> {low:g}"
        extra = f" and <= {high:g}" if high is not None else ""
        problems.append(f"{name}: must be {bound}{extra}")


def _networks(values: tuple[str, ...], name: str, problems: list[str], problem: str) -> None:
    """Peers given as IPs or CIDR networks (a host address counts as its /32 or /128)."""
    for index, peer in enumerate(values):
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            problems.append(f"{name}[{index}]: {problem}")


def _token_name(value: str, name: str, problems: list[str]) -> None:
    """Cookie and header names: an RFC 7230 token."""
    allowed = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    if not value or any(c not in allowed for c in value):
        problems.append(f"{name}: must be a non-empty token (letters, digits, -_.!#$%&'*+^`|~)")


def _dotted(value: str, name: str, problems: list[str], *, allow_empty: bool) -> None:
    if value == "" and allow_empty:
        return
    if value == "" or any(part == "" for part in value.split(".")):
        problems.append(f"{name}: must be a dotted path such as data.accessToken")


def _check(s: Settings, problems: list[str]) -> None:
    checks: list[Callable[[Settings, list[str]], None]] = [
        _check_server, _check_upstream, _check_auth, _check_guest, _check_cookies,
        _check_login, _check_cors, _check_csrf, _check_forward_auth, _check_state,
    ]
    for check in checks:
        check(s, problems)
    if not s.audit.sink:
        problems.append("audit.sink: must be stdout, stderr or a file path")
    if not s.access_log.sink:
        problems.append("access_log.sink: must be stdout, stderr or a file path")
    _range(s.audit.flush_interval_s, "audit.flush_interval_s", problems, low=0, high=60)


def _check_server(s: Settings, problems: list[str]) -> None:
    _range(s.server.port, "server.port", problems, low=0, high=65535)
    _range(s.server.workers, "server.workers", problems, low=1)
    prefix = s.server.reserved_prefix
    _abs_path(prefix, "server.reserved_prefix", problems)
    if prefix == "/" or prefix.endswith("/"):
        problems.append("server.reserved_prefix: must not be / nor end with /")
    _networks(s.server.trusted_proxies, "server.trusted_proxies", problems,
              "not an IP address or network")
    _range(s.server.max_head_bytes, "server.max_head_bytes", problems, low=1024)
    _range(s.server.max_headers, "server.max_headers", problems, low=1)
    _range(s.server.max_body_bytes, "server.max_body_bytes", problems, low=0)
    _range(s.server.head_timeout_s, "server.head_timeout_s", problems, low=0,
           low_inclusive=False)
    _range(s.server.keepalive_timeout_s, "server.keepalive_timeout_s", problems, low=0,
           low_inclusive=False)
    _range(s.server.admin_port, "server.admin_port", problems, low=0, high=65535)
    if s.server.admin_port and s.server.admin_port == s.server.port:
        problems.append("server.admin_port: must differ from server.port")
    if not s.server.admin_host:
        problems.append("server.admin_host: must be an address to listen on")
    for index, host in enumerate(s.server.allowed_hosts):
        if not _ALLOWED_HOST.fullmatch(host):
            problems.append(f"server.allowed_hosts[{index}]: not a host name, *.domain or IP")


def _check_upstream(s: Settings, problems: list[str]) -> None:
    _http_url(s.upstream.url, "upstream.url", problems)
    _range(s.upstream.connect_timeout_s, "upstream.connect_timeout_s", problems, low=0,
           low_inclusive=False)
    _range(s.upstream.read_timeout_s, "upstream.read_timeout_s", problems, low=0,
           low_inclusive=False)
    _range(s.upstream.max_connections, "upstream.max_connections", problems, low=1)
    _range(s.upstream.max_connections_per_client, "upstream.max_connections_per_client",
           problems, low=0)


def _check_auth(s: Settings, problems: list[str]) -> None:
    a = s.auth
    _http_url(a.url, "auth.url", problems, allow_empty=True)
    _token_name(a.scheme, "auth.scheme", problems)
    _range(a.cache_ttl_s, "auth.cache_ttl_s", problems, low=0)
    _range(a.invalid_cache_ttl_s, "auth.invalid_cache_ttl_s", problems, low=0)
    _range(a.cache_max_entries, "auth.cache_max_entries", problems, low=1)
    _range(a.retries, "auth.retries", problems, low=0, high=10)
    _range(a.retry_backoff_s, "auth.retry_backoff_s", problems, low=0)
    _abs_path(a.validate.path, "auth.validate.path", problems)
    _one_of(a.validate.method.upper(), ("GET", "POST"), "auth.validate.method", problems)
    _dotted(a.validate.user_path, "auth.validate.user_path", problems, allow_empty=True)
    _dotted(a.validate.id_field, "auth.validate.id_field", problems, allow_empty=False)
    _dotted(a.validate.roles_field, "auth.validate.roles_field", problems, allow_empty=False)
    r = a.refresh
    _abs_path(r.path, "auth.refresh.path", problems)
    if r.send == "refresh_body" and not r.body_field:
        problems.append("auth.refresh.body_field: required with send = \"refresh_body\"")
    _dotted(r.access_path, "auth.refresh.access_path", problems, allow_empty=False)
    _dotted(r.refresh_path, "auth.refresh.refresh_path", problems, allow_empty=True)
    _range(r.proactive_s, "auth.refresh.proactive_s", problems, low=0)
    _range(r.clock_skew_s, "auth.refresh.clock_skew_s", problems, low=0)
    _range(r.grace_s, "auth.refresh.grace_s", problems, low=0)
    _abs_path(a.login.path, "auth.login.path", problems, allow_empty=True)
    _dotted(a.login.access_path, "auth.login.access_path", problems, allow_empty=False)
    _dotted(a.login.refresh_path, "auth.login.refresh_path", problems, allow_empty=True)
    _abs_path(a.logout.path, "auth.logout.path", problems, allow_empty=True)
    _abs_path(a.logout.backend_path, "auth.logout.backend_path", problems, allow_empty=True)
    if a.logout.path and a.logout.send == "refresh_body" and not a.logout.body_field:
        problems.append("auth.logout.body_field: required with send = \"refresh_body\"")


def _check_guest(s: Settings, problems: list[str]) -> None:
    g = s.guest
    _abs_path(g.path, "guest.path", problems)
    _dotted(g.token_path, "guest.token_path", problems, allow_empty=False)
    _range(g.ttl_s, "guest.ttl_s", problems, low=0, low_inclusive=False)
    _range(g.max_concurrent, "guest.max_concurrent", problems, low=1)
    _range(g.per_client_per_minute, "guest.per_client_per_minute", problems, low=1)
    _range(g.per_minute, "guest.per_minute", problems, low=1)
    if g.username and not g.password_env:
        problems.append("guest.password_env: required when guest.username is set")
    if g.mode == "local" and not g.secret_env:
        problems.append("guest.secret_env: required with guest.mode = \"local\"")


def _check_cookies(s: Settings, problems: list[str]) -> None:
    c = s.cookies
    for key in ("access", "refresh", "guest"):
        _token_name(getattr(c, key), f"cookies.{key}", problems)
    if len({c.access, c.refresh, c.guest}) != 3:
        problems.append("cookies: access, refresh and guest must be three different names")
    _abs_path(c.path, "cookies.path", problems)
    if any(ch in c.domain for ch in ";, /\\"):
        problems.append("cookies.domain: must be a bare domain name")
    if c.same_site == "none" and not c.secure:
        problems.append('cookies.same_site: "none" requires cookies.secure = true')
    for key in ("access_max_age_s", "refresh_max_age_s", "guest_max_age_s"):
        _range(getattr(c, key), f"cookies.{key}", problems, low=0)


def _check_login(s: Settings, problems: list[str]) -> None:
    url = s.login.url
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        problems.append("login.url: must not contain spaces or control characters")
    elif not (url.startswith("/") and not url.startswith("//") and "\\" not in url):
        _http_url(url, "login.url", problems)
    _token_name(s.login.return_param, "login.return_param", problems)


def _check_cors(s: Settings, problems: list[str]) -> None:
    if s.cors is None:
        return
    c = s.cors
    for index, origin in enumerate(c.allow_origins):
        name = f"cors.allow_origins[{index}]"
        if origin == "*":
            if c.allow_credentials:
                problems.append(f'{name}: "*" is not allowed with allow_credentials = true')
            continue
        _origin(origin, name, problems)
    for index, method in enumerate(c.allow_methods):
        if not method.isalpha():
            problems.append(f"cors.allow_methods[{index}]: not an HTTP method")
    for key in ("allow_headers", "expose_headers"):
        for index, header in enumerate(getattr(c, key)):
            _token_name(header, f"cors.{key}[{index}]", problems)
    _range(c.max_age_s, "cors.max_age_s", problems, low=0)


def _origin(origin: str, name: str, problems: list[str]) -> None:
    parts = _split(origin, name, problems)
    if parts is None:
        return
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path or parts.query or parts.fragment):
        problems.append(f"{name}: must be an origin such as https://app.example.com")


def _check_csrf(s: Settings, problems: list[str]) -> None:
    for index, origin in enumerate(s.csrf.trusted_origins):
        _origin(origin, f"csrf.trusted_origins[{index}]", problems)


def _check_forward_auth(s: Settings, problems: list[str]) -> None:
    _networks(s.forward_auth.trusted, "forward_auth.trusted", problems,
              "not an IP address or CIDR network")


def sentinel_address(text: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too) as a pair, or None when it is not one."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def _check_state(s: Settings, problems: list[str]) -> None:
    if s.state.backend == "redis":
        parts = _split(s.state.redis_url, "state.redis_url", problems)
        if parts is not None and parts.scheme not in ("redis", "rediss", "unix"):
            problems.append("state.redis_url: must be a redis://, rediss:// or unix:// URL")
        if not s.state.key_env:
            problems.append("state.key_env: required with state.backend = \"redis\"")
        if s.state.tls_ca_file and parts is not None and parts.scheme != "rediss":
            problems.append("state.tls_ca_file: only used with a rediss:// redis_url")
        for index, address in enumerate(s.state.sentinels):
            if sentinel_address(address) is None:
                problems.append(f"state.sentinels[{index}]: must be host:port, not {address!r}")
        if (parts is not None and parts.scheme != "unix"
                and not parts.path.strip("/").isdigit() and parts.path.strip("/")):
            problems.append("state.redis_url: the path must be a database number, like /0")
        if s.state.sentinels and parts is not None and parts.scheme == "unix":
            problems.append("state.sentinels: needs a redis:// or rediss:// redis_url")
        if s.state.sentinels and not s.state.sentinel_service:
            problems.append("state.sentinel_service: required with state.sentinels")
    _range(s.state.timeout_s, "state.timeout_s", problems, low=0, low_inclusive=False,
           high=60)
    _range(s.state.recheck_s, "state.recheck_s", problems, low=0, low_inclusive=False,
           high=300)
    _range(s.state.settle_s, "state.settle_s", problems, low=0, high=3600)
