"""Where a cached-token request's CPU goes: py-spy samples ``gateway serve`` under wrk load.

    .venv/bin/python benchmarks/profile_gateway.py [--seconds 15] [--path /api/items]

Starts the counting backend and the gateway (the same processes as ``suite.py``), drives the
gateway with wrk (concurrency 32, one cached token) and records it with py-spy (``pip install
py-spy``; it reads the process with ptrace, so it needs root or ``ptrace_scope`` 0). Prints the
share of samples (a) spent inside each function, its callees included, for the gateway's own
functions and the main library layers, and (b) spent in each function's own code (self time).
The raw collapsed stacks are kept in ``benchmarks/results/profile-<label>.txt`` (feed them to
``flamegraph.pl`` or speedscope for a picture).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from suite import RESULTS, WRK, _gateway, _gateway_conf, _uvicorn  # noqa: E402

from tests.servers import free_port  # noqa: E402

_LAYERS = {  # a frame whose file is under this package is counted under that layer
    "gateway/": "gateway (own code)",
    "benchmarks/": "floor app (own code)",
    "aiohttp/": "aiohttp (client toward the upstream)",
    "uvicorn/": "uvicorn (server, HTTP parsing)",
    "asyncio/": "asyncio (event loop: uvloop's run is attributed here)",
    "cachetools/": "cachetools",
    "prometheus_client/": "prometheus_client",
    "json/": "json",
    "yarl/": "yarl",
    "multidict/": "multidict",
}
# Leaf frames that are one socket write (send(2) on loopback: the kernel's TCP work and the
# wake-up of the reader are charged to the calling Python frame).
_SOCKET_WRITES = ("RequestResponseCycle.send (uvicorn", "StreamWriter._write (aiohttp")


def _frame_parts(frame: str) -> tuple[str, str]:
    """``func (path/file.py:line)`` -> (``func (file.py)``, path)."""
    name, _, rest = frame.partition(" (")
    path = rest.rsplit(":", 1)[0]
    short = path.split("/site-packages/")[-1] if "/site-packages/" in path else path
    short = short.split("/wt-bench/")[-1]
    return f"{name} ({short})", path


def summarize(stacks: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_frame_parts(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        for name in {name for name, _ in frames}:
            inclusive[name] += count
        own[frames[-1][0]] += count
        leaf_path = frames[-1][1]
        layer = next((label for key, label in _LAYERS.items()
                      if leaf_path.startswith(key) or "/" + key in leaf_path), "other")
        if frames[-1][0].startswith(_SOCKET_WRITES):
            layer = "socket writes (uvicorn send to the client, aiohttp write to the upstream)"
        layers[layer] += count
    out = [f"{total} samples (idle time excluded)", "", "self time by layer (leaf frame's "
           "package):"]
    out += [f"  {100 * n / total:5.1f}%  {label}" for label, n in layers.most_common()]
    out += ["", "inclusive, gateway functions:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common()
            if name.split(" (")[1].startswith(("gateway/", "benchmarks/"))][:top]
    out += ["", "self time, top functions:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--path", default="/api/items")
    parser.add_argument("--label", default="latest")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--floor", action="store_true",
                        help="profile benchmarks/floor_app.py instead of the gateway")
    parser.add_argument("--source", type=Path,
                        help="profile the gateway package found in this directory instead "
                             "(e.g. an earlier commit: git archive <rev> | tar -x -C DIR)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gw-profile-"))
    backend_port, port = free_port(), free_port()
    backend = _uvicorn("benchmarks.bench_backend:app", backend_port)
    if args.floor:
        gateway = _uvicorn("benchmarks.floor_app:app", port,
                           {"FLOOR_UPSTREAM": f"http://127.0.0.1:{backend_port}"}, ready_path="/")
    else:
        gateway = _gateway(_gateway_conf(tmp, "gateway", backend_port), port,
                           source=args.source)
    backend.start()
    gateway.start()
    RESULTS.mkdir(exist_ok=True)
    stacks = RESULTS / f"profile-{args.label}.txt"
    try:
        assert gateway.proc is not None
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c32", f"-d{args.seconds + 3:g}s", "-s", str(WRK / "cached.lua"),
             gateway.url + args.path], stdout=subprocess.DEVNULL)
        time.sleep(1.5)
        spy = Path(sys.executable).with_name("py-spy")
        subprocess.run([str(spy) if spy.exists() else "py-spy", "record", "--pid",
                        str(gateway.proc.pid), "--format", "raw", "--rate", "250",
                        "--duration", f"{args.seconds:g}", "--nonblocking",
                        "--output", str(stacks)], check=True, capture_output=True,
                       timeout=args.seconds + 60)
        wrk.wait(timeout=args.seconds + 30)
    finally:
        gateway.stop()
        backend.stop()
    print(summarize(stacks, args.top))
    print(f"\nstacks: {stacks}")


if __name__ == "__main__":
    main()
