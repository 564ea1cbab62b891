"""Command line: ``gateway serve``, ``check``, ``demo`` and ``doctor`` (see README.md)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.settings import Settings, SettingsError, load_settings

EXIT_BAD_CONFIG = 2
# prometheus_client's switch to multiprocess mode (gateway.metrics reads the same variable); it
# must be set before prometheus_client is first imported, so it is not imported from there.
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _port(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1..65535, not {value}")
    return value


def _workers(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None


def _config_path(flag: str | None) -> Path:
    return Path(flag or os.environ.get("GATEWAY_CONFIG") or "gateway.toml")


def _load(flag: str | None) -> Settings | None:
    """The settings, or None after printing one line per problem (the file's, then what the
    environment lacks for it, such as the local guest signing key)."""
    from gateway.app import environment_problems

    path = _config_path(flag)
    try:
        settings = load_settings(path)
    except SettingsError as exc:
        problems = exc.problems
    else:
        problems = environment_problems(settings)
        if not problems:
            return settings
    for problem in problems:
        print(problem, file=sys.stderr)
    return None


def summary(settings: Settings) -> str:
    """What ``gateway check`` prints: upstream, auth endpoints, routes in match order."""
    a = settings.auth
    lines = [
        f"upstream: {settings.upstream.url}",
        f"auth: {settings.auth_url} (scheme {a.scheme})",
        f"  validate: {a.validate.method.upper()} {a.validate.path}",
        f"  refresh:  POST {a.refresh.path} (send {a.refresh.send})",
    ]
    if a.login.path:
        lines.append(f"  login:    POST {a.login.path}")
    if a.logout.path:
        lines.append(f"  logout:   POST {a.logout.path}")
    if settings.guest.enabled:
        lines.append(f"guest: {settings.guest.mode} mode")
    if settings.forward_auth.enabled:
        lines.append(f"forward-auth: {settings.server.reserved_prefix}/auth "
                     f"(trusted: {', '.join(settings.forward_auth.trusted) or 'nobody'})")
    lines.append("routes (first match wins):")
    for index, route in enumerate((*settings.routes, settings.default_route)):
        label = f"  [{index}]" if index < len(settings.routes) else "  default"
        methods = ",".join(route.methods) or "any"
        roles = f" roles={','.join(route.roles)}" if route.roles else ""
        lines.append(f"{label} {route.match} {methods} -> {route.access}{roles}"
                     f" (unauthenticated: {route.unauthenticated})")
    lines.append(f"state: {settings.state.backend}; audit: {settings.audit.sink}")
    return "\n".join(lines)


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return EXIT_BAD_CONFIG
    print(f"{_config_path(args.config)}: ok")
    print(summary(settings))
    return 0


@contextlib.contextmanager
def _metrics_dir() -> Iterator[None]:
    """A fresh directory where every worker keeps its metric values, so that a scrape
    answered by any worker reports them all (docs/deployment.md#metrics); removed at exit.
    A directory the operator chose (``$PROMETHEUS_MULTIPROC_DIR`` already set) is theirs to
    empty between runs, and is left alone. One worker needs none: its values stay in its
    memory, where counting costs a fraction of a file-backed write (benchmarks/README.md)."""
    if os.environ.get(_MULTIPROC_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[_MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(_MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, found by binding the way uvicorn
    will (SO_REUSEADDR) before any worker starts: one line instead of a worker's traceback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        return f"cannot listen on {host}:{port}: the host cannot be resolved ({reason})"
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen on {host}:{port}: the port is already in use "
                    "(stop the other server or choose another --port)")
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def _cmd_serve(args: argparse.Namespace) -> int:
    chosen = os.environ.get(_MULTIPROC_ENV)
    if chosen and not (os.path.isdir(chosen) and os.access(chosen, os.W_OK)):
        print(f"{_MULTIPROC_ENV}: {chosen} is not a writable directory (unset it, and "
              "gateway serve makes its own)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.server import serve_with_admin, uvicorn_options

    path = _config_path(args.config)
    settings = _load(args.config)
    if settings is None:
        return EXIT_BAD_CONFIG
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    problem = _listen_problem(host, port)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_BAD_CONFIG
    if workers > 1 and settings.state.backend == "memory":
        print(f"warning: {workers} workers with [state] backend = \"memory\": validation "
              "merging, refresh single-flight and rotation grace hold per worker only; use "
              "backend = \"redis\" to make the workers act as one", file=sys.stderr)
    os.environ["GATEWAY_CONFIG"] = str(path.resolve())
    if settings.server.admin_port and settings.server.admin_port == port:
        print(f"server.admin_port: must differ from the port to serve on ({port})",
              file=sys.stderr)
        return EXIT_BAD_CONFIG
    options: dict[str, Any] = dict(
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,  # X-Forwarded-* trust is the gateway's own decision
        log_level="info",
        # uvicorn's access log prints raw query strings (?access_token=...): the gateway
        # writes its own, without them ([access_log], docs/deployment.md#access-log).
        access_log=False,
        lifespan="on",
        # [server] limits a server must keep: head size before buffering, head and
        # keep-alive timeouts, no trailer merging (docs/limits.md).
        **uvicorn_options(settings.server),
    )
    shared = workers > 1 or bool(os.environ.get(_MULTIPROC_ENV))
    with _metrics_dir() if shared else contextlib.nullcontext():
        if not settings.server.admin_port:
            uvicorn.run("gateway.asgi:app", **options)
            return 0
        # Readiness and metrics on their own listener (docs/limits.md).
        return serve_with_admin(uvicorn.Config("gateway.asgi:app", **options),
                                settings.server.admin_host, settings.server.admin_port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    return run_demo(port=args.port)


def _cmd_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.doctor import DoctorOptions, diagnose

    path = _config_path(args.config)
    try:
        settings = load_settings(path)
    except SettingsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_CONFIG
    password = os.environ.get(args.password_env, "")
    if not password:
        print(f"--password-env: environment variable {args.password_env} is not set (it must "
              "hold the test account's password)", file=sys.stderr)
        return EXIT_BAD_CONFIG
    options = DoctorOptions(username=args.username, password=password,
                            login_field=args.login_field, public_url=args.public_url,
                            config_label=str(path))
    report = asyncio.run(diagnose(settings, options))
    print(report.json() if args.json else report.text())
    return report.exit_code


def _public_url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or text[-3:] == "://":
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, not {text!r}")
    return text.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="A reverse proxy that owns the login session.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $GATEWAY_CONFIG or ./gateway.toml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port)
    serve.add_argument("--workers", type=_workers)
    serve.set_defaults(func=_cmd_serve)

    check = commands.add_parser("check", help="validate a config and print a summary")
    check.add_argument("--config", help="config file (default: $GATEWAY_CONFIG or ./gateway.toml)")
    check.set_defaults(func=_cmd_check)

    demo = commands.add_parser("demo", help="the reference backend with the gateway in front")
    demo.add_argument("--port", type=_port, default=8080)
    demo.set_defaults(func=_cmd_demo)

    doctor = commands.add_parser(
        "doctor", help="check the backend's token setup with a test account (docs/doctor.md)",
        allow_abbrev=False)  # "--password x" must not pass for "--password-env x"
    doctor.add_argument("--config", help="config file (default: $GATEWAY_CONFIG or ./gateway.toml)")
    doctor.add_argument("--username", required=True, help="a test account's login")
    doctor.add_argument("--password-env", required=True, metavar="VAR",
                        help="environment variable holding its password (never a flag)")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument("--login-field", default="auto", metavar="NAME",
                        help="JSON key of the login name (default auto: sent as both email "
                             "and username)")
    doctor.add_argument("--public-url", type=_public_url, metavar="URL",
                        help="the URL browsers open (default: an absolute login.url, else "
                             "http://server.host:port)")
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
