"""The fault schedule (seeded, so a run replays) and the supervisor that carries it out.

A schedule is a list of timed faults drawn from one `random.Random(seed)`: SIGKILLs of the
services (each started again after a short pause, on the same port, as systemd or Kubernetes
would), RabbitMQ stopped gracefully (`stop_app` / `start_app`) or killed and started again,
and PostgreSQL restarted in immediate mode. Server restarts never overlap one another.
The supervisor also restarts a service that exits by itself, and counts it: a service that
cannot stand a dependency's outage shows up in the summary.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from shared import registry
from shared.stack import IsolatedStack, spawn_service
from tests.chaos.servers import PrivatePostgres, PrivateRabbit

FaultKind = Literal["kill", "rabbit-graceful", "rabbit-kill", "pg-immediate"]


@dataclass(frozen=True, order=True)
class Fault:
    at_s: float
    kind: FaultKind
    target: str = ""  # the service, for a kill
    pause_s: float = 0.0  # how long the killed thing stays down

    def __str__(self) -> str:
        what = f"{self.kind} {self.target}".strip()
        return f"t+{self.at_s:6.1f}s {what} (down {self.pause_s:.1f}s)"


@dataclass(frozen=True)
class FaultPlan:
    """How many of each fault, spread over `duration_s`."""

    duration_s: float
    kills_per_service: int = 3
    rabbit_graceful: int = 0
    rabbit_kills: int = 0
    pg_restarts: int = 0
    server_down_s: tuple[float, float] = (1.0, 3.0)  # how long a stopped server stays down
    services: tuple[str, ...] = registry.NAMES

    def draw(self, seed: int) -> list[Fault]:
        rng = random.Random(seed)
        faults = [Fault(round(rng.uniform(1.0, self.duration_s), 1), "kill", name,
                        round(rng.uniform(0.2, 2.0), 1))
                  for name in self.services for _ in range(self.kills_per_service)]
        servers: list[FaultKind] = (["rabbit-graceful"] * self.rabbit_graceful
                                    + ["rabbit-kill"] * self.rabbit_kills
                                    + ["pg-immediate"] * self.pg_restarts)
        rng.shuffle(servers)
        # One server fault per slot of the run, placed at random inside it, so none overlap.
        slot = self.duration_s / max(1, len(servers))
        for i, kind in enumerate(servers):
            at = i * slot + rng.uniform(0.2, 0.6) * slot
            faults.append(Fault(round(at, 1), kind, "", round(rng.uniform(*self.server_down_s), 1)))
        return sorted(faults)


@dataclass
class Supervisor:
    """Carries out a schedule against a stack on private servers; restarts what dies."""

    stack: IsolatedStack
    rabbit: PrivateRabbit
    postgres: PrivatePostgres
    say: Any = print
    done: Counter[str] = field(default_factory=Counter)
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    _killing: set[str] = field(default_factory=set)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def run(self, faults: list[Fault]) -> None:
        """Every fault at its time; returns when the last one is over and all is back up."""
        start = time.monotonic()
        kills: list[asyncio.Task[None]] = []
        for fault in faults:
            await asyncio.sleep(max(0.0, start + fault.at_s - time.monotonic()))
            if fault.kind == "kill":
                # Kills run beside each other and beside a server's outage.
                kills.append(asyncio.create_task(self._kill(fault)))
            else:
                await self._server_fault(fault)
        await asyncio.gather(*kills)  # and a kill that went wrong fails the run here

    async def watch(self) -> None:
        """Restart a service that exited on its own (not one being killed); cancel to stop."""
        while True:
            for name in list(self.stack.procs):
                if name in self._killing or self.stack.procs[name].poll() is None:
                    continue
                async with self._locks.setdefault(name, asyncio.Lock()):
                    proc = self.stack.procs[name]  # afresh: a kill may have replaced it meanwhile
                    if proc.poll() is None:
                        continue
                    self.unexpected_exits[name] += 1
                    self.say(f"{name} exited by itself with {proc.returncode}; starting it again")
                    await asyncio.sleep(1.0)
                    self._respawn(name)
            await asyncio.sleep(0.5)

    async def _kill(self, fault: Fault) -> None:
        name = fault.target
        # Two kills of one service may be drawn closer than a pause: the second waits for the
        # first's restart, or both would start a process and one of them be left untracked.
        async with self._locks.setdefault(name, asyncio.Lock()):
            proc = self.stack.procs[name]
            self._killing.add(name)
            try:
                if proc.poll() is None:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
                await asyncio.sleep(fault.pause_s)
                self._respawn(name)
            finally:
                self._killing.discard(name)
        self.done[f"kill {name}"] += 1

    async def _server_fault(self, fault: Fault) -> None:
        self.say(f"fault: {fault}")
        if fault.kind == "rabbit-graceful":
            await asyncio.to_thread(self.rabbit.stop_app)
            await asyncio.sleep(fault.pause_s)
            await asyncio.to_thread(self.rabbit.start_app)
        elif fault.kind == "rabbit-kill":
            await asyncio.to_thread(self.rabbit.kill)
            await asyncio.sleep(fault.pause_s)
            await asyncio.to_thread(self.rabbit.restart_killed)
        elif fault.kind == "pg-immediate":
            await asyncio.to_thread(self.postgres.stop_immediate)
            await asyncio.sleep(fault.pause_s)
            await asyncio.to_thread(self.postgres.start)
        self.done[fault.kind] += 1

    def _respawn(self, name: str) -> None:
        if self.stack.procs[name].poll() is None:
            raise RuntimeError(f"{name} still runs: starting another would leave one untracked")
        # From the event loop's thread, which lives as long as the run (PR_SET_PDEATHSIG).
        self.stack.procs[name] = spawn_service(
            registry.get(name), self.stack.env(name), self.stack.log_path(name), append=True)
