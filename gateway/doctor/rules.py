"""The doctor's judgements that need no backend call: numbers and settings in, a verdict out.

Kept apart from the live probe (``gateway/doctor/probe.py``) so each rule can be tested with
the exact numbers that cause a user-visible failure (a 60 s token with ``proactive_s = 300``,
a clock ten minutes ahead). The reasoning behind each verdict is in ``docs/doctor.md``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.cookies import CookiePolicy, Kind
from gateway.cors import CorsPolicy
from gateway.doctor.report import Check, failed, names, passed, skipped, warned
from gateway.settings import Settings
from gateway.tokens import claims_exp

BROWSER_COOKIE_LIMIT = 4096  # bytes of name + value a browser keeps per cookie (RFC 6265 6.1)
COOKIE_WARN_AT = 3584  # within 512 bytes of the limit: a few more claims and it is dropped
SKEW_WARN_S = 5.0  # NTP keeps hosts well within a second; 5 s is a clock nobody looks after
UrlSource = Literal["--public-url", "login.url", "server.host/port"]


# --------------------------------------------------------------------------- token lifetime


def lifetime_s(claims: dict[str, Any] | None, received_at: float) -> float | None:
    """How long a JWT lives: ``exp - iat`` (the backend's own numbers, whatever its clock),
    else what is left of it at ``received_at``; None for an opaque token or no ``exp``."""
    exp = claims_exp(claims)
    if exp is None or claims is None:
        return None
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool) and math.isfinite(iat):
        return exp - float(iat)
    return exp - received_at


def lifetime(settings: Settings, access_lifetime: float | None) -> Check:
    r = settings.auth.refresh
    margin = r.proactive_s + r.clock_skew_s
    if access_lifetime is None:
        detail = ("the access token is not a JWT with an exp claim: the gateway refreshes it "
                  "only when validation answers 401")
        if r.proactive_s > 0:
            return warned("lifetime", detail + f"; proactive_s = {r.proactive_s:g} has no effect",
                          "set auth.refresh.proactive_s = 0 (proactive refresh needs a JWT exp)")
        return skipped("lifetime", detail)
    life = access_lifetime
    told = f"the access token lives {life:.0f} s"
    if r.proactive_s > 0 and margin >= life:
        limit = life - r.clock_skew_s
        fix = (f"set auth.refresh.proactive_s below {limit:.0f} (e.g. {_suggest(life, r):g}), "
               "or issue longer-lived access tokens" if limit > 1 else
               f"lower auth.refresh.clock_skew_s (now {r.clock_skew_s:g}) and proactive_s, or "
               "issue longer-lived access tokens")
        return failed("lifetime", f"{told}, but proactive_s + clock_skew_s = {margin:g} s: it is "
                      "due for refresh as soon as it is issued, so every request refreshes", fix)
    if r.proactive_s > 0 and margin > life / 2:
        return warned("lifetime", f"{told}; proactive_s + clock_skew_s = {margin:g} s refreshes "
                      "it before half its life: twice the refresh traffic needed",
                      f"set auth.refresh.proactive_s = {_suggest(life, r):g}")
    if settings.auth.cache_ttl_s >= life:
        return warned("lifetime", f"{told}, no longer than cache_ttl_s = "
                      f"{settings.auth.cache_ttl_s:g} s: the validation cache outlives tokens",
                      f"set auth.cache_ttl_s well below {life:.0f} (default 2)")
    when = (f"refreshed {margin:g} s before exp (proactive_s + clock_skew_s)"
            if r.proactive_s > 0 else "refreshed when the backend answers 401 (proactive_s = 0)")
    return passed("lifetime", f"{told}; {when}; validations cached "
                  f"{settings.auth.cache_ttl_s:g} s")


def _suggest(life: float, r: Any) -> float:
    """A proactive window of a fifth of the token's life, at most 60 s, at least 1 s."""
    return float(max(1, math.floor(min(60.0, (life - r.clock_skew_s) / 5))))


def cookie_lifetime(settings: Settings, access_lifetime: float | None,
                    refresh_lifetime: float | None) -> Check:
    """The browser forgets a cookie at its Max-Age: the session ends there, whatever the
    backend's tokens would still allow (the gateway finds a session by its access cookie)."""
    c = settings.cookies
    uses_refresh = settings.auth.refresh.send != "access_header"
    if access_lifetime is not None and c.access_max_age_s < access_lifetime:
        return failed("cookie_lifetime", f"cookies.access_max_age_s = {c.access_max_age_s} but "
                      f"the access token lives {access_lifetime:.0f} s: the browser drops the "
                      "cookie first and the user is logged out early",
                      f"set cookies.access_max_age_s >= {math.ceil(access_lifetime)} (as long "
                      "as the refresh token lives)")
    if refresh_lifetime is None:
        return passed("cookie_lifetime", f"access cookie kept {c.access_max_age_s} s, refresh "
                      f"cookie {c.refresh_max_age_s} s (the refresh token's lifetime is not "
                      "readable: not a JWT)" if uses_refresh else
                      f"access cookie kept {c.access_max_age_s} s; with send = "
                      "\"access_header\" it is the session's refresh credential too")
    short = [f"{key} = {getattr(c, key)}" for key in ("access_max_age_s", "refresh_max_age_s")
             if getattr(c, key) < refresh_lifetime - 1]
    if uses_refresh and short:
        return warned("cookie_lifetime", f"the refresh token lives {refresh_lifetime:.0f} s but "
                      f"cookies.{' and cookies.'.join(short)}: users are logged out when the "
                      "cookie goes, before the backend would end the session",
                      f"set cookies.access_max_age_s and refresh_max_age_s to "
                      f"{math.ceil(refresh_lifetime)} (the refresh token's lifetime)")
    return passed("cookie_lifetime", f"cookies kept {c.access_max_age_s} s / "
                  f"{c.refresh_max_age_s} s; refresh token lives {refresh_lifetime:.0f} s")


# --------------------------------------------------------------------------- clocks


@dataclass(frozen=True, slots=True)
class ClockReading:
    """One exchange with the backend: our clock before and after, and its clock's marks."""

    sent_at: float
    received_at: float
    date_header: str = ""  # the reply's Date (1 s resolution)
    iat: float | None = None  # the fresh token's issued-at

    def from_iat(self) -> tuple[float, float] | None:
        """Bounds of (backend clock - our clock) from the token's ``iat``."""
        if self.iat is None:
            return None
        late = 1.0 if float(self.iat).is_integer() else 0.0  # whole seconds: truncated
        return (self.iat - self.received_at, self.iat + late - self.sent_at)

    def from_date(self) -> tuple[float, float] | None:
        """Bounds of (backend clock - our clock) from the ``Date`` header."""
        if not self.date_header:
            return None
        try:
            stamp = parsedate_to_datetime(self.date_header).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        return (stamp - self.received_at, stamp + 1.0 - self.sent_at)


def least_offset(bounds: tuple[float, float]) -> float:
    """The smallest offset these bounds allow (0 when they straddle zero), signed."""
    low, high = bounds
    if low <= 0 <= high:
        return 0.0
    return low if low > 0 else high


def clock_skew(settings: Settings, reading: ClockReading | None,
               access_lifetime: float | None) -> Check:
    if reading is None:
        return skipped("clock_skew", "no reply from the backend to read its clock from")
    by_iat, by_date = reading.from_iat(), reading.from_date()
    bounds = by_iat or by_date
    if bounds is None:
        return skipped("clock_skew", "the backend's replies have no Date header and its "
                       "token no iat claim: its clock cannot be read")
    source = "the token's iat" if by_iat else "its Date header"
    offset = least_offset(bounds)
    ahead = "ahead of" if offset > 0 else "behind"
    told = (f"the backend's clock is {abs(offset):.0f} s {ahead} this host's (from {source})"
            if abs(offset) >= 0.5 else
            f"the backend's clock agrees with this host's (from {source})")
    r = settings.auth.refresh
    ntp = ("synchronise both clocks (NTP: chrony or systemd-timesyncd); raising "
           "auth.refresh.clock_skew_s only hides it")
    margin = r.proactive_s + r.clock_skew_s
    life = access_lifetime
    if (life is not None and r.proactive_s > 0 and offset < 0 and life > margin
            and life + offset <= margin):  # fine by itself (see lifetime), due because of skew
        seen = life + offset
        return failed("clock_skew", f"{told}: its tokens look {seen:.0f} s long here, within "
                      "proactive_s + clock_skew_s, so every request refreshes", ntp)
    if abs(offset) > r.clock_skew_s:
        effect = ("tokens look valid here after the backend has expired them (extra 401 "
                  "round trips, proactive refresh too late)" if offset > 0 else
                  "tokens look expired here while the backend still accepts them")
        return failed("clock_skew", f"{told}, more than clock_skew_s = {r.clock_skew_s:g}: "
                      f"{effect}", ntp)
    if by_iat and by_date and abs(least_offset(by_date) - least_offset(by_iat)) > SKEW_WARN_S:
        return warned("clock_skew", f"{told}, but its Date header says "
                      f"{least_offset(by_date):+.0f} s: a proxy in front of it keeps another time",
                      "synchronise the clocks of the backend and the proxy in front of it")
    if abs(offset) > SKEW_WARN_S:
        return warned("clock_skew", f"{told}: within clock_skew_s = {r.clock_skew_s:g}, but "
                      "a clock nobody keeps in step drifts further", ntp)
    return passed("clock_skew", f"{told} (allowed: clock_skew_s = {r.clock_skew_s:g})")


# --------------------------------------------------------------------------- cookies


def cookie_size(policy: CookiePolicy, tokens: Sequence[tuple[Kind, str]]) -> Check:
    """Measure the ``Set-Cookie`` the gateway would write, by the gateway's own policy."""
    if not tokens:
        return skipped("cookie_size", "no token to measure (login did not succeed)")
    sizes: list[tuple[Kind, int]] = []
    for kind, token in tokens:
        header = policy.set(kind, token)[1].decode("ascii")
        sizes.append((kind, len(header.split(";", 1)[0].encode("ascii"))))
    told = ", ".join(f"{policy.names[k]} {n} bytes" for k, n in sizes)
    worst_kind, worst = max(sizes, key=lambda item: item[1])
    fix = ("put fewer claims in the token (ids instead of permission lists), or have the "
           "backend issue opaque tokens")
    if worst > BROWSER_COOKIE_LIMIT:
        return failed("cookie_size", f"{told}: {policy.names[worst_kind]} is over the "
                      f"browser's {BROWSER_COOKIE_LIMIT}-byte limit; browsers drop it silently, "
                      "so the login never sticks", fix)
    if worst > COOKIE_WARN_AT:
        return warned("cookie_size", f"{told}: within {BROWSER_COOKIE_LIMIT - worst} bytes of "
                      f"the browser's {BROWSER_COOKIE_LIMIT}-byte limit", fix)
    return passed("cookie_size", f"{told} (browser limit {BROWSER_COOKIE_LIMIT})")


def public_url(settings: Settings, flag: str | None) -> tuple[str | None, UrlSource]:
    """The URL browsers use to reach the gateway: ``--public-url``, else an absolute
    ``login.url``, else the address it listens on (None when that is a wildcard)."""
    if flag:
        return flag, "--public-url"
    if settings.login.url.startswith(("http://", "https://")):
        parts = urlsplit(settings.login.url)
        return f"{parts.scheme}://{parts.netloc}", "login.url"
    host = settings.server.host
    if host in ("", "0.0.0.0", "::"):  # a wildcard names no URL
        return None, "server.host/port"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.server.port}", "server.host/port"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_security(settings: Settings, url: str | None, source: UrlSource) -> Check:
    c = settings.cookies
    if url is None:
        return skipped("cookie_security", f"server.host = {settings.server.host!r} names no "
                       "URL, so the scheme browsers use is unknown",
                       "pass --public-url https://app.example.com (the address users open)")
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    where = f"browsers reach the gateway at {url} (from {source})"
    domain = c.domain.lstrip(".").lower()
    if domain and not (host == domain or host.endswith("." + domain)):
        return failed("cookie_security", f"{where}, but cookies.domain = {c.domain!r} does not "
                      "cover that host: browsers refuse every cookie the gateway sets",
                      f"set cookies.domain to {host!r} or a parent domain of it, or \"\"")
    if c.secure and not https and not _is_loopback(host):
        return failed("cookie_security", f"{where} over plain http, with cookies.secure = true: "
                      "browsers drop Secure cookies set over http, so logins never stick (on "
                      "http://localhost they are accepted, which is why it works locally)",
                      "serve the gateway over https (TLS in front of it); only on a trusted "
                      "test network, cookies.secure = false")
    if not c.secure and _is_loopback(host) and not https:
        return passed("cookie_security", f"{where}; cookies.secure = false is fine while "
                      "browsers only reach it on this host; set it to true in production")
    if not c.secure:
        fix = "set cookies.secure = true" + ("" if https else " and serve over https")
        return warned("cookie_security", f"{where} with cookies.secure = false: the session "
                      "cookies also travel over plain http, readable on the network", fix)
    if c.same_site == "strict":
        return warned("cookie_security", f"{where}; cookies.same_site = \"strict\": a visitor "
                      "following a link from another site (mail, search, chat) arrives without "
                      "the session and looks logged out", 'set cookies.same_site = "lax"')
    note = ("" if https else "; browsers accept Secure cookies on http://localhost only, "
            "serve https in production")
    return passed("cookie_security", f"{where}; Secure, SameSite={c.same_site.capitalize()}"
                  f"{note}")


# --------------------------------------------------------------------------- cors


def _site(url: str) -> tuple[str, str]:
    """(scheme, registrable domain) as browsers compare sites, approximated by the last two
    labels of the host name (an IP address is its own site)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = ".".join(host.split(".")[-2:])
    return parts.scheme, host


_ASKED = [(b"origin", b""), (b"access-control-request-method", b"POST"),
          (b"access-control-request-headers", b"content-type")]


def cors(settings: Settings, url: str | None) -> Check:
    if settings.cors is None:
        return skipped("cors", "no [cors]: the gateway adds no CORS headers (right for a "
                       "front end served from the gateway's own origin)")
    c = settings.cors
    if not c.allow_credentials:
        return failed("cors", "cors.allow_credentials = false: browsers on the allowed origins "
                      "neither send the session cookies nor keep the ones the gateway sets",
                      "set cors.allow_credentials = true (and fetch with credentials: "
                      "\"include\")")
    origins = [o for o in c.allow_origins if o != "*"]
    if not origins:
        return warned("cors", "[cors] allows no origin: every cross-origin request is refused",
                      "list the front end's origins in cors.allow_origins")
    policy = CorsPolicy(c)
    refused: list[str] = []
    for origin in origins:
        raw = origin.encode("latin-1")
        asked = [(k, raw if k == b"origin" else v) for k, v in _ASKED]
        headers = dict(policy.response_headers(raw))
        if (policy.preflight(raw, asked) is None
                or headers.get(b"access-control-allow-origin") != raw
                or headers.get(b"access-control-allow-credentials") != b"true"):
            refused.append(origin)
    if refused:
        return failed("cors", f"a credentialed JSON POST from {names(refused)} is refused at "
                      "preflight", "add POST to cors.allow_methods and content-type to "
                      "cors.allow_headers")
    if url is not None and settings.cookies.same_site != "none":
        cross = [o for o in origins if _site(o) != _site(url)]
        if cross:
            return failed("cors", f"{names(cross)} is another site than {url}: with "
                          f"SameSite={settings.cookies.same_site.capitalize()} the browser "
                          "sends no session cookie on its requests, so its users look logged "
                          "out", 'serve the front end on the same site, or set '
                          'cookies.same_site = "none" (needs cookies.secure = true and https)')
    exposed = {h.lower() for h in c.expose_headers}
    if "x-refreshed-token" not in exposed:
        return warned("cors", f"credentialed requests from {names(origins)} allowed, but "
                      "x-refreshed-token is not exposed: a front end that sends Authorization "
                      "cannot read its refreshed token", "add x-refreshed-token to "
                      "cors.expose_headers")
    return passed("cors", f"credentialed requests from {names(origins)} allowed; "
                  "x-refreshed-token exposed")


# --------------------------------------------------------------------------- forward auth


def forward_auth(settings: Settings) -> Check:
    section = getattr(settings, "forward_auth", None)
    if section is None:
        return skipped("forward_auth", "this gateway version has no [forward_auth]")
    if not getattr(section, "enabled", False):
        return skipped("forward_auth", "[forward_auth] is not enabled")
    trusted = tuple(str(p) for p in getattr(section, "trusted", ()))
    if not trusted:
        return failed("forward_auth", "forward_auth.trusted is empty: every auth subrequest "
                      "is answered 404, so the proxy in front refuses every request",
                      "list the proxy's address, e.g. trusted = [\"127.0.0.1/32\"]")
    networks = []
    for peer in trusted:
        try:
            networks.append(ipaddress.ip_network(peer, strict=False))
        except ValueError:
            return failed("forward_auth", f"forward_auth.trusted has {peer!r}, not an IP "
                          "address or network", "use addresses or CIDR networks")
    everyone = [str(n) for n in networks if n.prefixlen == 0]
    if everyone:
        return warned("forward_auth", f"forward_auth.trusted has {names(everyone)}: any peer "
                      "may ask, so anyone who can reach the gateway gets X-Auth-Authorization "
                      "answers", "list only the proxy's address or network")
    public = [str(n) for n in networks if n.is_global]
    if public:
        return warned("forward_auth", f"forward_auth.trusted has public networks "
                      f"{names(public)}: the proxy-to-gateway hop crosses the internet",
                      "keep the proxy and the gateway on a private network or loopback")
    return passed("forward_auth", f"auth subrequests accepted from {names(list(trusted))}")


def workers(settings: Settings) -> Check | None:
    """Several workers sharing nothing: single-flight and grace hold per worker."""
    if settings.server.workers > 1 and settings.state.backend == "memory":
        return warned("state", f"server.workers = {settings.server.workers} with [state] "
                      "backend = \"memory\": two tabs whose requests land on different "
                      "workers refresh twice, and rotation grace does not cover them",
                      'set [state] backend = "redis" (or workers = 1)')
    return None
