"""``create_app(settings)``: wires the parts together into one ASGI app, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.accesslog import AccessLog, current_request, observed
from gateway.audit import AuditLog, sink_problem
from gateway.authclient import AuthClient
from gateway.cookies import CookiePolicy
from gateway.cors import CorsPolicy
from gateway.csrf import CsrfGuard
from gateway.endpoints import Endpoints
from gateway.forward_auth import ForwardAuth
from gateway.guest import GuestIssuer, guest_secret
from gateway.handler import HTTPHandler
from gateway.login import LoginCapture, Logout
from gateway.metrics import Metrics
from gateway.owncookies import OwnCookies
from gateway.proxy import Upstream
from gateway.refresh import Refresher
from gateway.request import TrustedProxies
from gateway.routes import Router
from gateway.session import Sessions
from gateway.settings import Settings, SettingsError
from gateway.state import create_store
from gateway.types import Receive, Scope, Send
from gateway.validation import Validator
from gateway.websocket import WebSocketRelay


class Gateway:
    """The ASGI app: HTTP requests go to the handler; lifespan opens and closes the clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.audit = AuditLog(settings.audit.sink, on_event=self.metrics.event,
                              log_cache_hits=settings.audit.log_cache_hits,
                              flush_interval_s=settings.audit.flush_interval_s)
        trusted = TrustedProxies(settings.server.trusted_proxies)
        self.own_cookies = OwnCookies(settings)
        self.access_log = (AccessLog(settings.access_log.sink)
                           if settings.access_log.enabled else None)
        self.upstream = Upstream(settings.upstream, self.own_cookies,
                                 max_body_bytes=settings.server.max_body_bytes,
                                 metrics=self.metrics)
        self.websockets = WebSocketRelay(self.upstream)
        self.auth_client = AuthClient(settings, metrics=self.metrics)
        self.store = create_store(settings, self.audit)
        self.validator = Validator(settings, self.auth_client, self.store)
        self.refresher = Refresher(settings, self.auth_client, self.validator, self.store)
        self.cookies = CookiePolicy(settings.cookies)
        self.guests = GuestIssuer(settings, self.auth_client, self.store)
        router = Router.from_settings(settings.routes, settings.default_route)
        self.http = HTTPHandler(
            settings,
            upstream=self.upstream,
            endpoints=Endpoints(settings.server.reserved_prefix, client=self.auth_client,
                                probe_path=settings.auth.validate.path, store=self.store,
                                metrics=self.metrics, admin_port=settings.server.admin_port),
            trusted=trusted,
            router=router,
            sessions=Sessions(settings, self.validator, self.refresher, self.guests,
                              self.cookies, self.audit),
            login=LoginCapture(settings, self.cookies, self.audit, self.validator),
            logout=Logout(settings, self.auth_client, self.validator, self.refresher,
                          self.cookies, self.audit),
            audit=self.audit,
            count=self.metrics.response,
            websockets=self.websockets,
            own_cookies=self.own_cookies,
            csrf=CsrfGuard(settings, trusted),
            cors=CorsPolicy(settings.cors) if settings.cors is not None else None,
        )
        self.forward_auth = (ForwardAuth(settings, handler=self.http, router=router,
                                         count=self.metrics.response)
                             if settings.forward_auth.enabled else None)
        self.metrics.gauge("gateway_validation_cache_entries",
                           "Validations held in this process's cache",
                           lambda: float(self.validator.cache_size))
        self.metrics.gauge("gateway_state_healthy", "1 while the state store is reachable",
                           lambda: 1.0 if self.store.healthy else 0.0, mode="livemin")
        # Without forward-auth every request is the proxy handler's: no dispatch step between
        # (each coroutine level is paid again on every resumption of a request's task).
        self._serve_http = observed(self.http if self.forward_auth is None
                                    else self._dispatch_http, self.metrics, self.access_log)
        self._started = False
        self._start_lock = asyncio.Lock()

    async def startup(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.upstream.start()
                await self.websockets.start()
                await self.auth_client.start()
                await self.store.start()
                self._started = True

    async def shutdown(self) -> None:
        if self._started:
            await self.upstream.close()
            await self.websockets.close()
            await self.auth_client.close()
            await self.store.close()
            self._started = False
        self.audit.close()
        if self.access_log is not None:
            self.access_log.close()
        self.metrics.process_exiting()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if not self._started:  # a server that does not speak lifespan
                await self.startup()
            await self._serve_http(scope, receive, send)
        elif scope["type"] == "websocket":
            if not self._started:
                await self.startup()
            await self.http.websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _dispatch_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward-auth subrequests (when on) to their endpoint, everything else to the proxy
        handler; both are timed, counted and access-logged by :func:`observed`."""
        if self.forward_auth is not None and self.forward_auth.owns(scope):
            current_request().access = "gateway"
            await self.forward_auth(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _redis_extra_missing() -> str | None:
    """One line when the ``redis`` extra is not installed (the Redis client and the cipher
    that seals values at rest), instead of an ImportError traceback at startup."""
    try:
        import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        return (f"state.backend: \"redis\" needs the redis extra ({exc.name or 'redis'} is not "
                "installed): pip install 'gateway[redis]'")
    return None


def environment_problems(settings: Settings) -> list[str]:
    """What the environment lacks for these settings (keys named by ``*_env``), one line per
    problem naming the key; ``gateway check`` and ``gateway serve`` report them up front."""
    problems: list[str] = []
    checks: list[Callable[[Settings], object]] = []
    if settings.guest.enabled and settings.guest.mode == "local":
        checks.append(guest_secret)
    if settings.state.backend == "redis":
        missing = _redis_extra_missing()
        if missing:
            return [missing]
        from gateway.state.redis import redis_password, state_key_material

        checks += [state_key_material, redis_password]
    for check in checks:
        try:
            check(settings)
        except SettingsError as exc:
            problems.extend(exc.problems)
    problem = sink_problem(settings.audit.sink)
    if problem:
        problems.append(f"audit.sink: {problem}")
    if settings.access_log.enabled:
        problem = sink_problem(settings.access_log.sink)
        if problem:
            problems.append(f"access_log.sink: {problem}")
    return problems


def create_app(settings: Settings) -> Gateway:
    return Gateway(settings)
