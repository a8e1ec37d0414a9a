"""An isolated Spine for the end-to-end tests and the bench: its own databases, namespace, processes.

`IsolatedStack.start()` creates fresh databases `<namespace>_<suffix>` with their owner and
runtime roles (a generated password each) and migrates them with Alembic as the owner, declares
the namespace's topology (`declare_all`) before any service runs, and starts the services of
`shared.registry` as real processes on free ports until each answers /readyz; each logs in to
its database as its runtime role, never as the administrator. `stop()` sends SIGTERM and reports
any service that does not stop cleanly; `cleanup()` stops what still runs, deletes the queues
and exchanges and drops the databases and their roles. It is safe after a partial start and
more than once. No service code imports this; it is tooling around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx

from shared import registry
from shared.db.roles import DatabaseRoles, drop_database_and_roles, new_password, setup_database
from shared.messaging.topology import Topology, declare_all, delete_broker_objects, namespace_objects
from shared.registry import Service
from shared.tokens import JwtVerifier

ROOT = Path(__file__).resolve().parents[1]
ERP_SAMPLES = ("samples/erp/customers.csv", "samples/erp/products.json")


class StackError(RuntimeError):
    """The stack could not be started: a service exited, or did not become ready."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports nobody listens on right now.

    All are held open until all are picked: one by one, the OS may hand out a port again that
    the first service has not bound yet (seen: two services of one stack on one port).
    """
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies outright, so no service is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_service(service: Service, env: Mapping[str, str], log: Path, *,
                  append: bool = False) -> subprocess.Popen[bytes]:
    """Start `python -m services.<name>.main` with `env` over this process's environment."""
    # Own session: a Ctrl-C in the terminal reaches only the caller, which stops the services
    # with one SIGTERM (a second signal would make uvicorn skip its graceful shutdown).
    # PR_SET_PDEATHSIG fires when the spawning *thread* ends, so call this from a long-lived one.
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(  # nosec B603 # this Python, a module of the registry, no shell
            [sys.executable, "-m", service.module],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


async def _wait_stopped(name: str, proc: subprocess.Popen[bytes], grace_s: float) -> tuple[int, str | None]:
    """Wait for a process already sent SIGTERM; returns its exit code and a problem, if any."""
    try:
        code = await asyncio.to_thread(proc.wait, grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = await asyncio.to_thread(proc.wait)
        return code, f"{name} did not stop within {grace_s:.0f} s of SIGTERM (killed)"
    # A clean stop exits 0 (shared/runtime.py); -SIGTERM is a SIGTERM that came before serving began.
    if code not in (0, -signal.SIGTERM):
        return code, f"{name} exited with {code}"
    return code, None


@dataclass
class IsolatedStack:
    """Handles on one isolated stack; `await start()`, then `await cleanup()` in a `finally`."""

    namespace: str  # also the database prefix
    pg_url: str  # server URL, no database
    amqp_url: str
    log_dir: Path
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    log_level: str = "INFO"
    # More SPINE_* variables for every service process, e.g. {"SPINE_PREFETCH": "32"}.
    extra_env: dict[str, str] = field(default_factory=dict)
    services: tuple[Service, ...] = registry.SERVICES
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    # The runtime role's password of each service (generated per stack).
    db_passwords: dict[str, str] = field(default_factory=dict)
    queues: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    _cleaned: bool = False

    def __post_init__(self) -> None:
        self.pg_url = self.pg_url.rstrip("/")

    # ------------------------------------------------------------------ names
    def database(self, service: str) -> str:
        return registry.get(service).database(self.namespace)

    def dsn(self, service: str) -> str:
        """asyncpg DSN of a service's database, as the administrator (what tests look with)."""
        return f"{self.pg_url}/{self.database(service)}"

    def roles(self, service: str) -> DatabaseRoles:
        return DatabaseRoles.of(registry.get(service), self.namespace)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    def log_path(self, service: str) -> Path:
        return self.log_dir / f"{self.namespace}-{service}.log"

    def log_lines(self, service: str) -> list[str]:
        try:
            return self.log_path(service).read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, service: str, lines: int = 20) -> str:
        return "\n".join(self.log_lines(service)[-lines:])

    def log_text(self) -> str:
        """Every service's log, labelled: what a failed test or run shows."""
        return "\n".join(f"--- {s.name}\n" + "\n".join(self.log_lines(s.name)) for s in self.services)

    def pids(self) -> dict[int, str]:
        return {p.pid: name for name, p in self.procs.items()}

    def env(self, service: str) -> dict[str, str]:
        """The SPINE_* variables one service process runs with."""
        return {
            "SPINE_AMQP_URL": self.amqp_url,
            "SPINE_PG_URL": self.pg_url,
            "SPINE_DB_PREFIX": self.namespace,
            "SPINE_NAMESPACE": self.namespace,
            "SPINE_JWT_SECRET": self.secret,
            "SPINE_DB_PASSWORD": self.db_passwords[service],
            "SPINE_LOG_LEVEL": self.log_level,
            **self.extra_env,
            "SPINE_HTTP_PORT": str(self.ports[service]),
        }

    # ------------------------------------------------------------------ start
    async def start(self, ready_timeout_s: float = 90.0) -> None:
        """Databases, topology, the services until ready. Raises on any failure."""
        await self.create_databases()
        await self.declare_topology()
        self.spawn()
        await self.wait_ready(ready_timeout_s)

    async def create_databases(self) -> None:
        """A fresh database and roles per service, migrated; refuses to reuse an existing one."""
        conn = await asyncpg.connect(f"{self.pg_url}/postgres")
        try:
            taken = [r["datname"] for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])",
                [s.database(self.namespace) for s in self.services])]
        finally:
            await conn.close()
        if taken:
            raise StackError(f"database(s) {', '.join(taken)} already exist: refusing to reuse them")
        for service in self.services:
            self.databases.append(service.name)  # first: a failure half-way still drops it
            password = self.db_passwords.setdefault(service.name, new_password())
            await setup_database(self.pg_url, service, self.namespace, password)

    async def declare_topology(self) -> None:
        """Every exchange and queue, before any service can publish (as `make run` does)."""
        # Registered before declaring: a failure half-way still deletes what was declared.
        self.queues = sorted(set(self.queues) | set(namespace_objects(self.namespace)[0]))
        connection = await aio_pika.connect(self.amqp_url)
        try:
            declared = await declare_all(await connection.channel(), Topology(self.namespace))
        finally:
            await connection.close()
        self.queues = sorted(set(self.queues) | set(declared))

    def spawn(self) -> None:
        """Start every service as a process, on its port in `ports` or a free one; logs to `log_path`."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        missing = [s.name for s in self.services if s.name not in self.ports]
        self.ports.update(zip(missing, free_ports(len(missing)), strict=True))
        for service in self.services:
            self.procs[service.name] = spawn_service(
                service, self.env(service.name), self.log_path(service.name)
            )

    async def wait_ready(self, timeout_s: float = 90.0, names: tuple[str, ...] = ()) -> None:
        """Until each service (or each of `names`) answers /readyz; StackError if one exits or hangs."""
        deadline = time.monotonic() + timeout_s
        pending = set(names) or {s.name for s in self.services}
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    if (code := self.procs[name].poll()) is not None:
                        raise StackError(f"{name} exited with {code} while starting:\n"
                                         f"{self.log_tail(name, 40)}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self.url(name)}/readyz")).status_code == 200:
                            pending.discard(name)
                await asyncio.sleep(0.2)
        if pending:
            raise StackError(f"not ready after {timeout_s:.0f} s: {sorted(pending)}\n"
                             + "\n".join(f"--- {n}\n{self.log_tail(n, 40)}" for n in sorted(pending)))

    # ------------------------------------------------------------------ one service
    async def respawn(self, name: str, env: Mapping[str, str] | None = None,
                      ready_timeout_s: float = 60.0) -> None:
        """Start a service that has stopped again, on its port, with `env` over its usual
        variables (e.g. a crash point), and wait until it is ready. Its log is appended to."""
        if self.procs[name].poll() is None:
            raise StackError(f"{name} is still running (pid {self.procs[name].pid})")
        self.procs[name] = spawn_service(registry.get(name), {**self.env(name), **(env or {})},
                                         self.log_path(name), append=True)
        await self.wait_ready(ready_timeout_s, names=(name,))

    async def terminate(self, name: str, grace_s: float = 30.0) -> tuple[int, str | None]:
        """SIGTERM one service and wait for it; its exit code and a problem, if any."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        return await _wait_stopped(name, proc, grace_s)

    async def exited(self, name: str, timeout_s: float) -> int:
        """Wait until a service exits by itself; its exit code (StackError if it does not)."""
        try:
            return await asyncio.to_thread(self.procs[name].wait, timeout_s)
        except subprocess.TimeoutExpired:
            raise StackError(f"{name} still runs after {timeout_s:.0f} s:\n"
                             f"{self.log_tail(name, 40)}") from None

    async def upload_erp_samples(self) -> None:
        """Upload the sample ERP export through the erp_adapter, as an integration user would."""
        token = JwtVerifier(self.secret).issue("stack-integration", ["integration"])
        async with httpx.AsyncClient(base_url=self.url(registry.ERP_ADAPTER.name), timeout=30) as client:
            for path in ERP_SAMPLES:
                response = await client.post(
                    "/imports", files={"file": (Path(path).name, (ROOT / path).read_bytes())},
                    headers={"Authorization": f"Bearer {token}"},
                )
                if response.status_code != 200:
                    raise StackError(f"ERP upload of {path}: HTTP {response.status_code} "
                                     f"{response.text[:300]}")

    # ------------------------------------------------------------------ stop & cleanup
    async def stop(self, grace_s: float = 30.0) -> list[str]:
        """SIGTERM every service (a graceful stop); returns the problems (empty when clean)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        problems = []
        for name, proc in self.procs.items():
            self.exit_codes[name], problem = await _wait_stopped(name, proc, grace_s)
            if problem:
                problems.append(problem)
        return problems

    async def cleanup(self) -> list[str]:
        """Stop what still runs, delete the queues and exchanges, drop the databases."""
        if self._cleaned:
            return []
        self._cleaned = True
        failures: list[str] = []
        if any(p.poll() is None for p in self.procs.values()):
            failures += await self.stop()
        failures += await delete_broker_objects(
            self.amqp_url, self.queues, namespace_objects(self.namespace)[1])
        for name in self.databases:
            try:
                await drop_database_and_roles(self.pg_url, self.roles(name))
            except Exception as exc:
                failures.append(f"database of {name}: {exc}")
        return failures
