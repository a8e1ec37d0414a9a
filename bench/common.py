"""Helpers both bench scripts share: percentiles, and the CPU split read from /proc.

The CPU split follows the reference (`../shared/bench/limit/pipeline_limit.py`) so that the two
JSON lines compare key for key: per-process utime+stime deltas from /proc/<pid>/stat between the
start and the end of the measured window, grouped as `rabbitmq` (beam.smp and helpers),
`postgres` (every backend and auxiliary process), `bench_python` (the measuring process and all
its descendants: for Spine, the four services too), `kernel` (kthreads), `other`, and
`unattributed` (busy time in /proc/stat that no live process accounts for).

One addition to the reference's method: the CPU of children that exited *and were reaped*
during the window (the parent's cutime+cstime delta) goes to the parent's group. Postgres
backends are children of the postmaster, so the CPU of a connection opened and closed inside
the window (pool churn) counts as `postgres` instead of `unattributed`. The reference opens
all its connections before the clock, so this changes nothing for it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CLK = os.sysconf("SC_CLK_TCK")
_RABBIT = {"beam.smp", "erl_child_setup", "inet_gethost", "epmd"}
# More than this many cores outside the benchmark: the run was disturbed (as in the reference).
DISTURBED_CORES = 0.2

ProcKey = tuple[int, int]  # (pid, start time): a reused pid is another process


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def pct(sorted_vals: Sequence[float], p: float) -> float | None:
    """The reference's nearest-rank percentile, so both sides round the same way."""
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def say(text: str) -> None:
    """A progress line on stderr (stdout carries only the JSON result)."""
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ProcInfo:
    comm: str
    ppid: int
    ticks: int  # utime + stime of the process itself
    reaped: int  # cutime + cstime: children it has waited for
    cmd: str = ""  # for postgres processes only: the title (`postgres: 15/main: user db …`)


@dataclass(frozen=True)
class CpuSnapshot:
    t: float
    procs: dict[ProcKey, ProcInfo]
    mine: frozenset[int]
    idle: int
    iowait: int
    steal: int
    total: int


def _read_procs() -> dict[ProcKey, ProcInfo]:
    procs: dict[ProcKey, ProcInfo] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        r = s.rfind(b")")
        fl = s[r + 2:].split()
        comm = s[s.find(b"(") + 1:r].decode(errors="replace")
        cmd = ""
        if comm == "postgres":
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                pass
        procs[(int(d), int(fl[19]))] = ProcInfo(
            comm, int(fl[1]), int(fl[11]) + int(fl[12]), int(fl[13]) + int(fl[14]), cmd)
    return procs


EXITED = "exited in the window (backends, autovacuum workers)"


def postgres_label(cmd: str) -> str:
    """`postgres: 15/main: postgres mydb 127.0.0.1(5) idle` → `db:mydb`; aux → its role."""
    if not cmd.startswith("postgres: "):
        return "postmaster"
    rest = cmd.split(": ", 2)[-1].split()
    if len(rest) >= 3 and ("(" in rest[2] or rest[2] == "[local]"):
        return f"db:{rest[1]}"
    return " ".join(rest[:3]) if rest else "postgres"


def descendants(procs: Mapping[ProcKey, ProcInfo], root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for (pid, _), info in procs.items():
        kids.setdefault(info.ppid, []).append(pid)
    mine, todo = set(), [root]
    while todo:
        p = todo.pop()
        mine.add(p)
        todo.extend(kids.get(p, ()))
    return mine


def cpu_snapshot(root: int | None = None) -> CpuSnapshot:
    procs = _read_procs()
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return CpuSnapshot(monotonic(), procs, frozenset(descendants(procs, root or os.getpid())),
                       v[3], v[4], v[7], sum(v[:8]))


def _group(pid: int, info: ProcInfo, mine: frozenset[int]) -> str:
    if pid in mine:
        return "bench_python"
    if info.comm in _RABBIT:
        return "rabbitmq"
    if info.comm == "postgres":
        return "postgres"
    if info.ppid == 2 or pid == 2:
        return "kernel"
    return "other"


def cpu_split(a: CpuSnapshot, b: CpuSnapshot, labels: Mapping[int, str] | None = None,
              orders: int | None = None, pg_labels: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Average cores per group over the window; `labels` names bench processes (pid → label).

    A bench process without a label is named by its `comm`; postgres processes are named by
    `pg_labels` (pid → label), else by their database or role (`postgres_cores`). With `orders`, also the CPU
    milliseconds each group spent per order (the reference README's "CPU budget per order").
    """
    wall = (b.t - a.t) or 1e-9
    ncpu = os.cpu_count() or 1
    tot = (b.total - a.total) or 1
    groups = dict.fromkeys(("rabbitmq", "postgres", "bench_python", "kernel", "other"), 0.0)
    detail: dict[str, float] = {}
    pg_detail: dict[str, float] = {}
    mine = a.mine | b.mine
    # A process gone at `b` is in its parent's reaped delta with its whole life (and what it had
    # reaped itself); the part from before `a` is taken off again.
    gone: dict[int, int] = {}
    for key, info in a.procs.items():
        if key not in b.procs:
            gone[info.ppid] = gone.get(info.ppid, 0) + info.ticks + info.reaped
    for key, info in b.procs.items():
        old = a.procs.get(key)
        dt = (info.ticks - old.ticks) if old else info.ticks  # born in the window: counts whole
        reaped = max(0, info.reaped - old.reaped - gone.get(key[0], 0)) if old else 0
        if dt + reaped <= 0:
            continue
        grp = _group(key[0], info, mine)
        if grp == "postgres":
            label = (pg_labels or {}).get(key[0]) or postgres_label(info.cmd)
            pg_detail[label] = pg_detail.get(label, 0.0) + dt / _CLK
            if reaped:
                pg_detail[EXITED] = pg_detail.get(EXITED, 0.0) + reaped / _CLK
        dt += reaped
        groups[grp] += dt / _CLK
        if grp == "bench_python":
            name = (labels or {}).get(key[0], info.comm)
            detail[name] = detail.get(name, 0.0) + dt / _CLK
    busy_frac = (tot - (b.idle - a.idle) - (b.iowait - a.iowait)) / tot
    cores = {k: round(v / wall, 3) for k, v in groups.items()}
    cores["unattributed"] = round(max(0.0, busy_frac * ncpu - sum(groups.values()) / wall), 3)
    total = sum(cores.values()) or 1e-9
    out: dict[str, Any] = {
        "wall_s": round(wall, 3),
        "ncpu": ncpu,
        "machine_busy_pct": round(100.0 * busy_frac, 1),
        "iowait_pct": round(100.0 * (b.iowait - a.iowait) / tot, 1),
        "steal_pct": round(100.0 * (b.steal - a.steal) / tot, 1),
        "cores": cores,
        "share_pct": {k: round(100.0 * v / total, 1) for k, v in cores.items()},
        "bench_cores": {k: round(v / wall, 3) for k, v in sorted(detail.items())},
        "postgres_cores": {k: round(v / wall, 3) for k, v in sorted(pg_detail.items(), key=lambda x: -x[1])},
        "disturbed": cores["other"] + cores["unattributed"] > DISTURBED_CORES,
    }
    if orders:
        per = {k: v * wall * 1e3 / orders for k, v in cores.items()}
        per.update({k: v * 1e3 / orders for k, v in detail.items()})
        out["cpu_ms_per_order"] = {k: round(v, 3) for k, v in per.items()}
    return out


def median(values: Iterable[float | None]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
