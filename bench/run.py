#!/usr/bin/env python3
"""Benchmark the real Spine pipeline against the hand-written reference, in the same run.

Runs, interleaved, the reference (`<limit-dir>/pipeline_limit.py`) and Spine
(`bench/spine_pipeline.py`, a fresh isolated stack each time) with the same number of orders
and the same load shape — reference, Spine, Spine, reference, reference, Spine, … — for
--rounds rounds at max load (a closed loop of --inflight orders end to end), and, with
--rate R, as many open-loop runs at R orders/s for latency. Then prints the medians, the
ratio Spine/reference, and writes every JSON line to bench/results/<timestamp>.jsonl.

Exit status: 0 when every Spine run verified (nothing lost, duplicated, dead-lettered or left
unsent), 1 when one did not, 2 when a Spine run failed to produce a result, 130 on Ctrl-C.
Speed never changes the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `shared` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, say  # noqa: E402
from bench.stack import ROOT, find_leftovers, remove_leftovers  # noqa: E402

REFERENCE = "reference"
SPINE = "spine"


@dataclass
class Run:
    round: int
    mode: str  # "max" or "rate <R>/s"
    system: str
    exit_code: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and "error" not in self.result and bool(self.result)


# ----------------------------------------------------------------------------- child processes
_current: tuple[subprocess.Popen[str], str] | None = None  # the running measurement, its system


def _forward(signum: int, _frame: Any) -> None:
    """Pass SIGINT/SIGTERM on to the running measurement so it cleans up, then stop."""
    if _current is not None and _current[0].poll() is None:
        child, system = _current
        with contextlib.suppress(ProcessLookupError):
            # Spine cleans up on SIGTERM; the reference's step processes stop on SIGINT.
            os.killpg(child.pid, signal.SIGINT if system == REFERENCE else signal.SIGTERM)
    raise KeyboardInterrupt


def run_child(cmd: Sequence[str], system: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run one measurement in its own process group; returns (exit code, stdout)."""
    global _current
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,  # nosec B603 # our own command, a list, no shell
                            start_new_session=True)
    _current = (proc, system)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except KeyboardInterrupt:
        say(f"interrupted: waiting for the {system} run to clean up …")
        with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.wait(120)
        raise
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        return 124, out
    finally:
        _current = None
    return proc.returncode, out


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return {}


# ----------------------------------------------------------------------------- reporting
def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{fmt(median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def cpu_ms_per_order(result: dict[str, Any]) -> dict[str, float]:
    """CPU milliseconds per order per group and per bench process, for either system."""
    cpu = result.get("cpu") or {}
    orders = result.get("orders") or 0
    wall = cpu.get("wall_s") or 0
    if not orders or not wall:
        return {}
    per = {k: v * wall * 1e3 / orders for k, v in (cpu.get("cores") or {}).items()}
    per.update({f"proc:{k}": v * wall * 1e3 / orders
                for k, v in (cpu.get("bench_cores") or {}).items()})
    return per


def progress_line(run: Run) -> str:
    r = run.result
    if not r or "error" in r:
        return f"FAILED (exit {run.exit_code}): {r.get('error') or r.get('failure') or 'no result'}"
    cpu = r.get("cpu") or {}
    text = (f"{fmt(r.get('orders_per_s'))} orders/s, p50 {fmt(r.get('p50_ms'), 1)} ms, "
            f"p99 {fmt(r.get('p99_ms'), 1)} ms, lost {r.get('lost')}, dup {r.get('duplicates')}, "
            f"machine {fmt(cpu.get('machine_busy_pct'))}% busy")
    if cpu.get("disturbed"):
        text += " [DISTURBED: other processes used CPU]"
    if run.exit_code:
        text += f" — verification FAILED (exit {run.exit_code}): {r.get('problems') or r.get('failure')}"
    return text


def _values(runs: list[Run], key: str) -> list[float]:
    return [float(r.result[key]) for r in runs if r.result.get(key) is not None]


def summarize(runs: list[Run], modes: list[str], systems: list[str]) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {}
    head = (f"{'mode':<14}{'system':<11}{'orders/s median (min–max)':<28}"
            f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'lost':>7}{'dup':>5}{'disturbed':>11}")
    lines += [head, "-" * len(head)]
    for mode in modes:
        med: dict[str, dict[str, float | None]] = {}
        for system in systems:
            sel = [r for r in runs if r.mode == mode and r.system == system and r.result
                   and "error" not in r.result]
            tput, p50, p95, p99 = (_values(sel, k) for k in ("orders_per_s", "p50_ms", "p95_ms", "p99_ms"))
            lost = sum(int(r.result.get("lost") or 0) for r in sel)
            dups = sum(int(r.result.get("duplicates") or 0) for r in sel)
            disturbed = sum(1 for r in sel if (r.result.get("cpu") or {}).get("disturbed"))
            med[system] = {"orders_per_s": median(tput), "p50_ms": median(p50), "p95_ms": median(p95),
                           "p99_ms": median(p99)}
            failed = sum(1 for r in runs if r.mode == mode and r.system == system and not r.ok)
            lines.append(f"{mode:<14}{system:<11}{spread(tput):<28}{fmt(median(p50), 1):>9}"
                         f"{fmt(median(p95), 1):>9}{fmt(median(p99), 1):>9}{lost:>7}{dups:>5}"
                         f"{f'{disturbed}/{len(sel)}':>11}"
                         + (f"   ({failed} run(s) failed verification or did not finish)" if failed else ""))
            cpu: dict[str, list[float]] = {}
            for r in sel:
                for k, v in cpu_ms_per_order(r.result).items():
                    cpu.setdefault(k, []).append(v)
            summary.setdefault(mode, {})[system] = {
                "runs": len(sel), "failed": failed, "orders_per_s": tput, **med[system],
                "lost": lost, "duplicates": dups, "disturbed": disturbed,
                "cpu_ms_per_order": {k: round(median(v) or 0.0, 3) for k, v in sorted(cpu.items())},
            }
        if REFERENCE in med and SPINE in med:
            ratio = {}
            for key in ("orders_per_s", "p50_ms", "p95_ms", "p99_ms"):
                a, b = med[SPINE][key], med[REFERENCE][key]
                ratio[key] = round(a / b, 3) if a is not None and b else None
            summary[mode]["ratio_spine_over_reference"] = ratio
            lines.append(f"{'':<14}{'ratio':<11}{'Spine/reference ' + fmt(ratio['orders_per_s'], 2):<28}"
                         f"{fmt(ratio['p50_ms'], 1) + 'x':>9}{fmt(ratio['p95_ms'], 1) + 'x':>9}"
                         f"{fmt(ratio['p99_ms'], 1) + 'x':>9}")
        lines.append("")
    # CPU per order: where the machine's time goes, per system (median over the runs).
    for mode in modes:
        for system in systems:
            per: dict[str, float] = summary.get(mode, {}).get(system, {}).get("cpu_ms_per_order") or {}
            if not per:
                continue
            groups = "  ".join(f"{k} {v:.2f}" for k, v in per.items()
                               if not k.startswith("proc:") and k != "bench_python")
            procs = "  ".join(f"{k[5:]} {v:.2f}" for k, v in per.items() if k.startswith("proc:"))
            total = sum(v for k, v in per.items() if not k.startswith("proc:"))
            lines.append(f"CPU ms/order  {mode:<12}{system:<10} total {total:.2f}: python "
                         f"{per.get('bench_python', 0.0):.2f} [{procs}]  {groups}")
    return lines, summary


# ----------------------------------------------------------------------------- machine state
def machine_busy(seconds: float = 1.0) -> float:
    def read() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    a = read()
    time.sleep(seconds)
    b = read()
    total = sum(b[:8]) - sum(a[:8]) or 1
    idle = (b[3] - a[3]) + (b[4] - a[4])
    return 100.0 * (total - idle) / total


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,  # nosec B603 B607 # git from PATH, as the developer runs it
                                  timeout=10, check=False).stdout.strip()
        except OSError:
            return ""
    status = git("status", "--porcelain")
    diff = git("diff", "HEAD")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_paths": len(status.splitlines()) if status else 0,
            # Tells two runs on the same commit but different uncommitted edits apart.
            "diff_sha1": (hashlib.sha1(diff.encode(), usedforsecurity=False).hexdigest()[:12]
                          if diff else None)}


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    default_limit = os.environ.get("LIMIT_DIR") or str(ROOT.parent / "shared" / "bench" / "limit")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each system per mode (default 3)")
    ap.add_argument("--orders", "-n", type=int, default=2000,
                    help="orders per run, both systems (default 2000)")
    ap.add_argument("--inflight", type=int, default=64,
                    help="max-load runs: orders in flight end to end (default 64)")
    ap.add_argument("--rate", type=float, action="append", default=[], metavar="R",
                    help="also run open-loop latency runs at R orders/s; repeatable (the reference "
                         "README uses 200; pick one Spine can sustain too, see bench/README.md)")
    ap.add_argument("--rate-orders", type=int, default=None,
                    help="orders per --rate run (default: --orders)")
    ap.add_argument("--no-max", dest="max_load", action="store_false",
                    help="skip the max-load runs (use with --rate)")
    ap.add_argument("--warmup", type=int, default=100, help="Spine warm-up orders per run, not measured")
    ap.add_argument("--prefetch", type=int, default=64, help="consumer prefetch, both systems (default 64)")
    ap.add_argument("--limit-dir", default=default_limit,
                    help="directory of pipeline_limit.py (default $LIMIT_DIR or ../shared/bench/limit)")
    ap.add_argument("--spine-only", action="store_true", help="do not run the reference")
    ap.add_argument("--reference-args", default="", help="extra arguments for pipeline_limit.py")
    ap.add_argument("--spine-args", default="", help="extra arguments for bench/spine_pipeline.py")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"),
                    help="where <timestamp>.jsonl is written (default bench/results)")
    ap.add_argument("--run-timeout", type=float, default=1800.0, help="limit per run in seconds")
    ap.add_argument("--cleanup-stale", action="store_true",
                    help="first remove databases/queues/exchanges left by killed earlier runs "
                         "(spinebench_*); only when no other benchmark is running")
    ap.add_argument("--pg-url", default=os.environ.get("SPINE_PG_URL", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--amqp-url", default=os.environ.get("SPINE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.orders < 1:
        ap.error("--rounds and --orders must be at least 1")
    if not args.max_load and not args.rate:
        ap.error("--no-max needs --rate")
    return args


def main() -> int:
    args = parse()
    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    limit = Path(args.limit_dir) / "pipeline_limit.py"
    systems = [SPINE] if args.spine_only else [REFERENCE, SPINE]
    if not args.spine_only and not limit.is_file():
        say(f"reference not found at {limit}: running Spine alone (no ratio). "
            "Set LIMIT_DIR=… (make) or --limit-dir to compare.")
        systems = [SPINE]
    modes = (["max"] if args.max_load else []) + [f"rate {r:g}/s" for r in args.rate]

    if args.cleanup_stale:
        removed = asyncio.run(remove_leftovers(args.pg_url, args.amqp_url))
        say(f"removed {len(removed)} leftover namespace(s): {removed}" if removed else "no leftovers")
    else:
        with contextlib.suppress(Exception):
            if left := asyncio.run(find_leftovers(args.pg_url)):
                say(f"note: {len(left)} leftover spinebench namespace(s) from killed runs "
                    f"(remove with --cleanup-stale): {', '.join(left)}")

    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = results_dir / f"{stamp}.jsonl"
    busy = machine_busy()
    git = git_state()
    meta: dict[str, Any] = {"kind": "meta", "started": datetime.now().isoformat(timespec="seconds"),
            "host": platform.node(), "ncpu": os.cpu_count(), "python": platform.python_version(),
            "git": git, "busy_before_pct": round(busy, 1), "systems": systems, "modes": modes,
            "args": vars(args), "reference": str(limit) if REFERENCE in systems else None}
    shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
    say(f"bench: {' and '.join(systems)}, {', '.join(modes)}, {args.rounds} round(s), "
        f"N={args.orders}; results → {shown}")
    if busy > 20:
        say(f"warning: the machine is already {busy:.0f}% busy before the first run; "
            "runs will likely be disturbed (see the 'disturbed' column)")

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs: list[Run] = []
    interrupted = False
    with out_path.open("w") as sink:
        sink.write(json.dumps(meta) + "\n")
        sink.flush()
        try:
            for rnd in range(1, args.rounds + 1):
                for mode in modes:
                    order = systems if rnd % 2 == 1 else list(reversed(systems))
                    for system in order:
                        run = Run(rnd, mode, system)
                        cmd = command(system, mode, args, limit)
                        code_state = git_state()  # the tree may change between runs: others commit
                        say(f"round {rnd}/{args.rounds} [{mode}]: {system} …")
                        t0 = time.monotonic()
                        run.exit_code, stdout = run_child(cmd, system, env, args.run_timeout)
                        run.seconds = time.monotonic() - t0
                        run.result = last_json(stdout)
                        runs.append(run)
                        say(f"round {rnd}/{args.rounds} [{mode}]: {system} {progress_line(run)} "
                            f"({run.seconds:.0f}s)")
                        if code_state != git:
                            say(f"note: the checkout changed since the start: now {code_state}")
                        sink.write(json.dumps({"kind": "run", "round": rnd, "mode": mode, "system": system,
                                               "git": code_state, "exit_code": run.exit_code, "cmd": cmd,
                                               "wall_s": round(run.seconds, 1), "result": run.result}) + "\n")
                        sink.flush()
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: summarizing what finished")
        lines, summary = summarize(runs, modes, systems)
        sink.write(json.dumps({"kind": "summary", "interrupted": interrupted, **summary}) + "\n")

    print()
    rate_n = f", {args.rate_orders} per rate run" if args.rate and args.rate_orders else ""
    print(f"Spine vs reference — N={args.orders} orders per run{rate_n}, {args.rounds} round(s), "
          f"max load = closed loop of {args.inflight} in flight; {os.cpu_count()} CPUs; "
          + (f"git {git['commit']} ({git['uncommitted_paths']} uncommitted paths)" if git["commit"]
             else "not a git checkout"))
    print("\n".join(lines))
    if SPINE in systems and REFERENCE not in systems:
        print("(reference not run: no ratio)")
    print(f"\nJSON lines: {out_path}")

    spine_runs = [r for r in runs if r.system == SPINE]
    bad = [r for r in spine_runs if r.result and "error" not in r.result and r.exit_code]
    broken = [r for r in spine_runs if not r.result or "error" in r.result]
    ref_bad = [r for r in runs if r.system == REFERENCE and not r.ok]
    if ref_bad:
        print(f"note: {len(ref_bad)} reference run(s) failed their own checks; see the JSON lines")
    if interrupted:
        return 130
    if bad:
        print(f"FAIL: {len(bad)} Spine run(s) failed verification: "
              + "; ".join(str(r.result.get("problems")) for r in bad))
        return 1
    if broken:
        print(f"FAIL: {len(broken)} Spine run(s) produced no result: "
              + "; ".join(str(r.result.get("error") or f"exit {r.exit_code}") for r in broken))
        return 2
    return 0


def command(system: str, mode: str, args: argparse.Namespace, limit: Path) -> list[str]:
    orders = args.orders
    if mode.startswith("rate "):
        rate = ["--rate", mode.split()[1].removesuffix("/s")]
        orders = args.rate_orders or args.orders
    else:
        rate = ["--inflight", str(args.inflight)]
    if system == REFERENCE:
        return [sys.executable, str(limit), "-n", str(orders), "--prefetch", str(args.prefetch),
                *rate, *args.reference_args.split()]
    return [sys.executable, "-m", "bench.spine_pipeline", "-n", str(orders), "--warmup",
            str(args.warmup), "--prefetch", str(args.prefetch), "--pg-url", args.pg_url,
            "--amqp-url", args.amqp_url, *rate, *args.spine_args.split()]


if __name__ == "__main__":
    sys.exit(main())
