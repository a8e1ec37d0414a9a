#!/usr/bin/env python3
"""Summarize py-spy collapsed stacks (`py-spy record --format raw`): where a service's CPU goes.

    bench/spine_pipeline.py -n 1000 --py-spy /tmp/pyspy-venv/bin/py-spy > /tmp/result.json
    bench/profile_summary.py bench/results/profile/*.txt --result /tmp/result.json

py-spy samples threads that are not idle, i.e. running *or runnable*: on a saturated machine a
thread waiting for a CPU counts too, so raw sample counts overstate CPU time (about 2x on the
2-core bench machine). The shares are what to read: a descheduled thread is caught where it
was preempted, in proportion to the CPU spent there. With --result (the JSON line
spine_pipeline.py printed for the same run), shares are turned into CPU ms per order using the
CPU that /proc measured for the service (`cpu.cpu_ms_per_order.<service>`; the file's stem
names the service).

For each file it prints: CPU per package (each sample charged to the innermost frame outside
the standard library, so asyncio/contextlib/typing time goes to whoever called it), a few named
costs (every sample whose stack matches a pattern), the hottest leaf functions, and the hottest
functions counted inclusively (each at most once per stack).

Caveat: SQLAlchemy's asyncio layer runs statements in greenlets, and the coroutine it awaits
(asyncpg) shows up as a stack of its own, without the handler frames above it. Inclusive shares
of handler-level frames are therefore too low; package shares and named costs are not affected.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

# Leaf frames are bucketed by the first of these that matches the file path.
PACKAGES = [
    ("spine:services", r"(^|/)services/"),
    ("spine:shared", r"(^|/)shared/"),
    ("sqlalchemy", r"(^|/)sqlalchemy/|^<sqlalchemy generated"),
    ("asyncpg", r"(^|/)asyncpg/"),
    ("faststream", r"(^|/)faststream/"),
    ("aio_pika/aiormq/pamqp", r"(^|/)(aio_pika|aiormq|pamqp)/"),
    ("pydantic", r"(^|/)pydantic(_core)?/"),
    # py-spy drops the `opentelemetry/` of the namespace package: `trace/…`, `sdk/…`, `baggage/…`
    ("opentelemetry",
     r"(^|/)opentelemetry/|^(trace|context|propagate|propagators|sdk|baggage|attributes|util|semconv)/"),
    ("fast_depends", r"(^|/)fast_depends/"),
    ("anyio", r"(^|/)anyio/"),
    ("uvicorn/starlette/fastapi", r"(^|/)(uvicorn|starlette|fastapi)/"),
    ("json", r"(^|/)json/"),
    ("logging", r"(^|/)logging/"),
    ("asyncio/uvloop", r"(^|/)(asyncio|uvloop)/"),
    ("ssl", r"(^|/)ssl\.py"),
    ("stdlib other", r"^[a-z_]+\.py$|^<frozen|^(re|collections|concurrent|importlib|encodings)/"),
]
EVENT_LOOP = "event loop (uvloop C code: sockets, timers, callbacks)"
# Packages whose time is charged to their caller in the "by package" view.
TRANSPARENT = {"asyncio/uvloop", "stdlib other", "json", "logging", "ssl"}

# Named costs: share of samples whose stack has a frame matching the pattern.
NAMED = [
    ("new DB connections (asyncpg connect incl. SSL attempt, type introspection, SA on_connect)",
     r"connect_utils\.py|_introspect_types|AsyncAdapt_dbapi_connection\.create|on_connect|"
     r"first_connect|Connection\.close \(asyncpg"),
    ("outbox relay (claim, publish with confirm, mark sent)", r"OutboxRelay\."),
    ("FastStream consume pipeline outside the handler (decode, DI, middlewares, ack)",
     r"^(?!.*subscribers\.py).*(SubscriberUsecase|HandlerItem|fast_depends|AioPikaParser|"
     r"_Delivery|consume_scope)"),
    ("OpenTelemetry (spans, context, propagation)",
     r"(^|;)[^;]*\((opentelemetry|trace|sdk|context|propagate|propagators)/"),
    ("SQLAlchemy statement construction, cache keys and compilation",
     r"cache_key\.py|compiler\.py|coercions\.py|sql/dml\.py|sql/base\.py|_generative|"
     r"sql/selectable\.py|sql/elements\.py:(?!\d+\);ClauseElement\._execute)"),
    ("pydantic validation and serialisation", r"\(pydantic(_core)?/"),
    ("json encode/decode", r"\(json/"),
    ("AMQP client (aio-pika/aiormq/pamqp)", r"\((aio_pika|aiormq|pamqp)/"),
    ("asyncpg protocol and statements", r"\(asyncpg/"),
    ("threads other than the event loop", r"^thread \(\d+\): (?!MainThread)"),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def package_of(path: str) -> str:
    for name, pattern in PACKAGES:
        if re.search(pattern, path):
            return name
    return "other"


def short(frame: str) -> str:
    """`func (…/site-packages/pkg/mod.py:12)` → `func (pkg/mod.py)`; lines dropped to aggregate."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def load(path: Path, main_thread_only: bool = True) -> list[tuple[str, list[str], int]]:
    """(raw stack line, frames without the thread prefix, samples) per distinct stack.

    Only the event loop's thread by default: the others (AnyIO workers, the OTel batch exporter)
    are idle in Condition.wait, which py-spy counts as active, while /proc shows ~0 CPU.
    """
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        body, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = body.split(";")
        # With --threads (and --pid/--subprocesses) py-spy puts `thread (tid): name` first.
        frames = [f for f in frames if not f.startswith(("process ", "thread ("))]
        if not main_thread_only or "MainThread" in body.split(";", 1)[0] or not body.startswith("thread ("):
            stacks.append((body, frames, n))
    return stacks


def charged_package(frames: list[str]) -> str:
    """Package of the innermost frame that is not standard library (else the leaf's)."""
    if not frames or frames[-1].startswith("Runner.run (asyncio/runners.py"):
        return EVENT_LOOP
    packages = []
    for frame in frames:
        m = _FRAME.match(frame.strip())
        packages.append(package_of(m.group("file") if m else frame))
    for pkg in reversed(packages):
        if pkg not in TRANSPARENT:
            return pkg
    return packages[-1] if packages else "other"


def report(path: Path, top: int, cpu_ms: float | None, all_threads: bool) -> None:
    stacks = load(path, main_thread_only=not all_threads)
    total = sum(n for _, _, n in stacks) or 1

    def fmt(n: int) -> str:
        text = f"{100.0 * n / total:5.1f}%"
        if cpu_ms:
            text += f" {cpu_ms * n / total:6.2f} ms/order"
        return text

    by_pkg: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    named: Counter[str] = Counter()
    for raw, frames, n in stacks:
        by_pkg[charged_package(frames)] += n
        leaf[short(frames[-1]) if frames else EVENT_LOOP] += n
        for name, pattern in NAMED:
            if re.search(pattern, raw):
                named[name] += n
        for f in {short(f) for f in frames}:
            incl[f] += n
    print(f"== {path.stem}: {total} samples"
          + (f"; {cpu_ms:.2f} ms CPU per order measured in /proc" if cpu_ms else ""))
    print("-- CPU by package (standard library charged to its caller)")
    for name, n in by_pkg.most_common():
        print(f"   {fmt(n)}  {name}")
    print("-- named costs (stacks matching; these overlap)")
    for name, _ in NAMED:
        print(f"   {fmt(named[name])}  {name}")
    print(f"-- top {top} leaf functions")
    for name, n in leaf.most_common(top):
        print(f"   {fmt(n)}  {name}")
    print(f"-- top {top} inclusive (frames under 97% of samples, i.e. below the event loop)")
    shown = 0
    for name, n in incl.most_common():
        if n > 0.97 * total:
            continue
        print(f"   {fmt(n)}  {name}")
        shown += 1
        if shown >= top:
            break
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="py-spy --format raw outputs")
    ap.add_argument("--top", type=int, default=30, help="rows per list (default 30)")
    ap.add_argument("--result", type=Path, default=None,
                    help="the spine_pipeline.py JSON line of the profiled run (for ms per order)")
    ap.add_argument("--all-threads", action="store_true",
                    help="also count threads other than the event loop's (see the module doc)")
    args = ap.parse_args()
    cpu: dict[str, float] = {}
    if args.result:
        line = [x for x in args.result.read_text().splitlines() if x.startswith("{")][-1]
        cpu = json.loads(line).get("cpu", {}).get("cpu_ms_per_order", {})
    for path in args.files:
        report(path, args.top, cpu.get(path.stem), args.all_threads)


if __name__ == "__main__":
    main()
