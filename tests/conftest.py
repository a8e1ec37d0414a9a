"""Fixtures shared by unit, integration and e2e tests.

Unit tests touch no server. Integration and e2e tests ask for `servers`, which finds a real
PostgreSQL and RabbitMQ (or starts them with testcontainers when a Docker engine answers) and
fails the run loudly when neither is possible: a missing server must never look like a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from _pytest.runner import runtestprotocol

from shared import registry
from shared.db.migrate import drop_database, ensure_database
from shared.db.roles import DatabaseRoles, drop_database_and_roles, new_password, setup_database
from shared.messaging.health import quorum_round_trip
from shared.messaging.topology import delete_broker_objects

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

# Read by every `ServiceSettings`; a fresh random secret per test session unless one is given.
os.environ.setdefault("SPINE_JWT_SECRET", secrets.token_hex(32))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder, so `-m "not integration and not e2e"` runs without servers."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """Where the test PostgreSQL and RabbitMQ answer (server URLs, no database in `pg_url`)."""

    pg_url: str
    amqp_url: str
    source: str  # "environment" or "testcontainers"

    @property
    def env(self) -> dict[str, str]:
        """The variables a service process needs to reach these servers."""
        return {"SPINE_PG_URL": self.pg_url, "SPINE_AMQP_URL": self.amqp_url}


def configured_urls() -> tuple[str, str]:
    """The URLs tests use: SPINE_TEST_* first, then the services' own SPINE_* variables."""
    pg = os.environ.get("SPINE_TEST_PG_URL") or os.environ.get("SPINE_PG_URL") or DEFAULT_PG_URL
    amqp = (
        os.environ.get("SPINE_TEST_AMQP_URL")
        or os.environ.get("SPINE_AMQP_URL")
        or DEFAULT_AMQP_URL
    )
    return pg.rstrip("/"), amqp


async def probe_postgres(pg_url: str, timeout: float = 3.0) -> str | None:
    """None when PostgreSQL answers a query at `pg_url`, else why not."""
    try:
        conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres", timeout=timeout)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return None


async def probe_rabbitmq(amqp_url: str, timeout: float = 3.0) -> str | None:
    """None when RabbitMQ accepts a connection and opens a channel at `amqp_url`, else why not."""
    try:
        conn = await aio_pika.connect(amqp_url, timeout=timeout)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    try:
        await conn.channel()
    finally:
        await conn.close()
    return None


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(
            ["docker", "info"], capture_output=True, timeout=15, check=False
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_containers(stack: contextlib.ExitStack) -> tuple[str, str]:
    """Start PostgreSQL 15 and RabbitMQ 3.10; stopped when `stack` closes (blocking)."""
    try:
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.rabbitmq import RabbitMqContainer
    except ImportError:  # older testcontainers keep them at the top level
        from testcontainers.postgres import PostgresContainer  # type: ignore[no-redef]
        from testcontainers.rabbitmq import RabbitMqContainer  # type: ignore[no-redef]

    pg = stack.enter_context(PostgresContainer("postgres:15"))
    rabbit = stack.enter_context(RabbitMqContainer("rabbitmq:3.10"))
    pg_url = (
        f"postgresql://{pg.username}:{pg.password}@{pg.get_container_host_ip()}"
        f":{pg.get_exposed_port(pg.port)}"
    )
    amqp_url = (
        f"amqp://{rabbit.username}:{rabbit.password}@{rabbit.get_container_host_ip()}"
        f":{rabbit.get_exposed_port(rabbit.port)}/"
    )
    return pg_url, amqp_url


@contextlib.asynccontextmanager
async def find_servers() -> AsyncIterator[Servers]:
    """Reachable servers for integration and e2e tests, or `pytest.fail` naming what was tried.

    The configured URLs are used when they answer. Otherwise, where a Docker engine answers,
    throwaway containers are started (and exported as SPINE_TEST_* so child processes find
    them). Otherwise the run fails: a CI job without its servers must be red, not skipped.
    """
    pg_url, amqp_url = configured_urls()
    problems = {
        "PostgreSQL": (pg_url, await probe_postgres(pg_url)),
        "RabbitMQ": (amqp_url, await probe_rabbitmq(amqp_url)),
    }
    if all(err is None for _, err in problems.values()):
        yield Servers(pg_url, amqp_url, "environment")
        return

    missing = "; ".join(
        f"{name} at {_redact(url)} did not answer ({err})"
        for name, (url, err) in problems.items()
        if err is not None
    )
    if not await asyncio.to_thread(docker_engine_answers):
        pytest.fail(
            f"integration servers unavailable: {missing}. Start them, or point "
            "SPINE_TEST_PG_URL / SPINE_TEST_AMQP_URL at servers that answer "
            "(no Docker engine answers `docker info`, so testcontainers cannot stand in).",
            pytrace=False,
        )

    with contextlib.ExitStack() as stack:
        try:
            pg_url, amqp_url = await asyncio.to_thread(_start_containers, stack)
        except Exception as exc:
            pytest.fail(f"{missing}; starting testcontainers failed too: {exc}", pytrace=False)
        for name, url, probe in (
            ("PostgreSQL", pg_url, probe_postgres),
            ("RabbitMQ", amqp_url, probe_rabbitmq),
        ):
            if (err := await probe(url, 10.0)) is not None:
                pytest.fail(f"{name} container at {_redact(url)} did not answer: {err}",
                            pytrace=False)
        saved = {k: os.environ.get(k) for k in ("SPINE_TEST_PG_URL", "SPINE_TEST_AMQP_URL")}
        os.environ["SPINE_TEST_PG_URL"], os.environ["SPINE_TEST_AMQP_URL"] = pg_url, amqp_url
        try:
            yield Servers(pg_url, amqp_url, "testcontainers")
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _redact(url: str) -> str:
    """`scheme://user:***@host` — the URL a person can compare with their settings."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


@pytest.fixture(scope="session")
async def servers(request: pytest.FixtureRequest) -> AsyncIterator[Servers]:
    """The PostgreSQL and RabbitMQ integration and e2e tests run against (fails if none).

    While they are in use, `StuckSessionWatch` looks for sessions stuck in a transaction.
    """
    async with find_servers() as found:
        watch = StuckSessionWatch(found.pg_url)
        watch.start()
        request.config.stash.setdefault(STUCK_SESSION_WATCHES, []).append(watch)
        try:
            yield found
        finally:
            watch.stop()


@pytest.fixture(scope="session")
def stuck_session_watch(servers: Servers, request: pytest.FixtureRequest) -> StuckSessionWatch:
    """The watch `servers` started (for the test of the guard itself)."""
    return request.config.stash[STUCK_SESSION_WATCHES][-1]


# --------------------------------------------------------------------------------------------
# The guard: no Spine session may sit idle inside a transaction
# --------------------------------------------------------------------------------------------

STUCK_AFTER_S = 3.0  # every unit of work and relay pass in the tests takes far less
_STUCK_QUERY = """
SELECT datname, application_name, pid, round(extract(epoch FROM now() - state_change)), query
FROM pg_stat_activity
WHERE application_name LIKE 'spine-%' AND state LIKE 'idle in transaction%'
  AND state_change < now() - make_interval(secs => $1)
"""
STUCK_SESSION_WATCHES = pytest.StashKey[list["StuckSessionWatch"]]()


class StuckSessionWatch(threading.Thread):
    """Polls pg_stat_activity while the integration and e2e tests run, in its own thread and loop.

    A session idle in a transaction means every later write on it is acknowledged and never
    committed (a poisoned pooled connection loses data silently). The run fails if one is seen.
    """

    def __init__(self, pg_url: str, interval: float = 0.5) -> None:
        super().__init__(name="stuck-session-watch", daemon=True)
        self.pg_url = pg_url
        self.interval = interval
        self.seen: dict[tuple[str, int], str] = {}
        # Sessions stuck on purpose (the guard's own test): noted apart, never a failure.
        self.expected: set[str] = set()
        self.expected_seen: set[str] = set()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        conn = None
        while not self._stop_event.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(f"{self.pg_url}/postgres", timeout=5)
                for db, app, pid, age, query in await conn.fetch(_STUCK_QUERY, STUCK_AFTER_S):
                    if app in self.expected:
                        self.expected_seen.add(app)
                        continue
                    self.seen[(db, pid)] = (f"{db} {app} pid {pid}: idle in transaction for "
                                            f"{age} s after {query[:120]!r}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn = None  # the server is being restarted by a test: look again shortly
            await asyncio.sleep(self.interval)
        if conn is not None:
            await conn.close()


# --------------------------------------------------------------------------------------------
# The run's own watchdogs: a dead broker and a run past its deadline end it with a summary
# --------------------------------------------------------------------------------------------

# A run that can no longer pass should say why while there is time to print it: CI kills a run at
# 90 minutes with no summary at all (seen: a wedged broker made every stack time out, one by one).
RUN_STARTED = time.monotonic()
STOPPED_BY_WATCHDOG = pytest.StashKey[str]()
RABBIT_LOG = Path("/var/log/rabbitmq/rabbit@localhost.log")


def _deadline_s() -> float | None:
    """SPINE_TEST_DEADLINE_S: seconds after which no further test starts (unset: no deadline)."""
    raw = os.environ.get("SPINE_TEST_DEADLINE_S", "").strip()
    return float(raw) if raw else None


def _stop_run(session: pytest.Session, why: str, detail: str = "") -> None:
    session.config.stash[STOPPED_BY_WATCHDOG] = f"{why}\n{detail}".rstrip()
    session.shouldstop = why


def _broker_problem() -> str | None:
    """Run the quorum-queue round trip in a thread of its own (a test's loop may be running)."""
    _, amqp_url = configured_urls()
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(quorum_round_trip(amqp_url))))
    worker.start()
    worker.join(timeout=40)
    return result[0] if result else "the round trip did not end within 40 s"


# Where the broker may be restarted (CI: SPINE_RESET_WEDGED_BROKER=1, a local node, root), a
# test the wedge made fail is run once more after `scripts/ensure_servers.sh` restarted it (at
# most HEALS_PER_RUN times a run); elsewhere the run stops at once with the reason.
HEALED = pytest.StashKey[bool]()
HEALS = pytest.StashKey[int]()
HEALS_PER_RUN = 3


def _may_heal() -> bool:
    return (os.environ.get("SPINE_RESET_WEDGED_BROKER") == "1" and os.geteuid() == 0
            and shutil.which("rabbitmq-server") is not None)


def _heal(session: pytest.Session) -> bool:
    """Restart the wedged local broker; True once it completes a round trip again."""
    session.config.stash[HEALS] = session.config.stash.get(HEALS, 0) + 1
    ran = subprocess.run([str(Path(__file__).parents[1] / "scripts" / "ensure_servers.sh")],
                         capture_output=True, text=True, timeout=900, check=False)
    sys.stderr.write(f"\n[broker watchdog] {ran.stdout.strip()}\n{ran.stderr.strip()}\n")
    return ran.returncode == 0 and _broker_problem() is None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """After a failing integration or e2e test, heal the broker or stop the run if it is wedged."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not ({"integration", "e2e"} & set(item.keywords)):
        return
    config = item.session.config
    if config.stash.get(STOPPED_BY_WATCHDOG, None) is not None or item.stash.get(HEALED, False):
        return
    if (problem := _broker_problem()) is None:
        return
    tail = ""
    with contextlib.suppress(OSError):
        tail = "\n".join(RABBIT_LOG.read_text(errors="replace").splitlines()[-15:])
    if _may_heal() and config.stash.get(HEALS, 0) < HEALS_PER_RUN:
        sys.stderr.write(f"\n[broker watchdog] RabbitMQ stopped completing a quorum-queue round "
                         f"trip after {item.nodeid} failed ({problem}); restarting it.\n"
                         f"Last lines of {RABBIT_LOG}:\n{tail}\n")
        if _heal(item.session):
            item.stash[HEALED] = True  # pytest_runtest_protocol runs the test again
            return
    _stop_run(item.session, f"RabbitMQ stopped completing a quorum-queue round trip after "
                            f"{item.nodeid} failed ({problem}); every later test would fail "
                            "the same way", f"Last lines of {RABBIT_LOG}:\n{tail}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run a server test; if the broker wedged under it and was restarted, once more (reported)."""
    if not _may_heal() or not ({"integration", "e2e"} & set(item.keywords)):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if item.stash.get(HEALED, False) and any(r.failed for r in reports):
        sys.stderr.write(f"\n[broker watchdog] running {item.nodeid} again on the restarted "
                         "broker; only this second run is reported\n")
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Past SPINE_TEST_DEADLINE_S, start no further test (the run ends failed, with its summary)."""
    deadline = _deadline_s()
    if deadline is None or nextitem is None or item.session.shouldstop:
        return
    if (elapsed := time.monotonic() - RUN_STARTED) > deadline:
        _stop_run(item.session, f"the run passed its deadline (SPINE_TEST_DEADLINE_S={deadline:.0f})"
                                f" after {elapsed:.0f} s, at {item.nodeid}; the tests after it did "
                                "not run")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when any Spine session was seen stuck inside a transaction, or a watchdog stopped it."""
    if (why := session.config.stash.get(STOPPED_BY_WATCHDOG, None)) is not None:
        sys.stderr.write(f"\nFAILED watchdog: {why}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    watches = session.config.stash.get(STUCK_SESSION_WATCHES, [])
    stuck = [line for watch in watches for line in watch.seen.values()]
    if stuck:
        sys.stderr.write(
            f"\nFAILED guard: {len(stuck)} Spine database session(s) sat idle in a transaction "
            f"for over {STUCK_AFTER_S:.0f} s (work on them is acknowledged and never committed):\n"
            + "".join(f"  {line}\n" for line in stuck)
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --------------------------------------------------------------------------------------------
# Isolation: names, databases, exchanges and queues
# --------------------------------------------------------------------------------------------


def unique_name(prefix: str = "spinetest") -> str:
    """`spinetest_<8 hex>`: valid as a namespace, a database prefix and a queue prefix."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def session_namespace() -> str:
    """One namespace for a whole session, for tests that share long-lived topology (e2e)."""
    return unique_name()


@pytest.fixture
def namespace() -> str:
    """A namespace of exchanges and queues no other test (or run) uses."""
    return unique_name()


@pytest.fixture
def db_prefix(namespace: str) -> str:
    """A database prefix no other test uses (`<prefix>_<service>` is each database's name)."""
    return namespace


DatabaseFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def databases(servers: Servers, db_prefix: str) -> AsyncIterator[DatabaseFactory]:
    """`await databases("order")` creates `<prefix>_order` and returns its SQLAlchemy URL.

    Every database created is dropped (connections closed by force) when the test ends.
    """
    created: list[str] = []

    async def create(service: str) -> str:
        name = f"{db_prefix}_{service}"
        if not await ensure_database(servers.pg_url, name):
            raise AssertionError(f"database {name} already existed: names must be unique")
        created.append(name)
        return f"{servers.pg_url.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"

    try:
        yield create
    finally:
        for name in reversed(created):
            await drop_database(servers.pg_url, name)


@contextlib.asynccontextmanager
async def service_database(admin_url: str, service: str, prefix: str) -> AsyncIterator[str]:
    """A service's database and roles under `prefix`, migrated as the owner; dropped afterwards.

    Yields the runtime role's generated password: settings built with it (`db_password`) log in
    as that role, as the service does in production, never as the administrator.
    """
    roles = DatabaseRoles.of(registry.get(service), prefix)
    password = new_password()
    try:
        await setup_database(admin_url, registry.get(service), prefix, password)
        yield password
    finally:
        await drop_database_and_roles(admin_url, roles)


@dataclass
class RabbitJanitor:
    """Remembers the exchanges and queues a test declares and deletes them when it ends.

    There is no management API to list them, so whatever a test declares is registered here
    by name (the `Topology` of the test's namespace registers its exchanges automatically).
    """

    amqp_url: str
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def queue(self, name: str) -> str:
        if name not in self.queues:
            self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        if name not in self.exchanges:
            self.exchanges.append(name)
        return name

    def namespace(self, namespace: str) -> None:
        """The exchanges every `Topology(namespace)` declares, and `declare_all`'s unrouted queue."""
        self.exchange(f"{namespace}.events")
        self.exchange(f"{namespace}.dlx")
        self.exchange(f"{namespace}.unrouted")
        self.queue(f"{namespace}.unrouted")

    def subscribers_of(self, broker: Any, topology: Any) -> None:
        """Each subscribed queue of a FastStream broker, and its dead-letter queue."""
        for sub in broker.subscribers:
            name = sub.queue.name
            self.queue(name)
            self.queue(topology.dead_letter_queue(name).name)

    async def clean(self) -> list[str]:
        """Delete everything registered; returns what could not be deleted."""
        return await delete_broker_objects(self.amqp_url, self.queues, self.exchanges)


@pytest.fixture
async def rabbit_janitor(servers: Servers, namespace: str) -> AsyncIterator[RabbitJanitor]:
    """Deletes the test's exchanges (`<namespace>.events`, `.dlx`) and registered queues."""
    janitor = RabbitJanitor(servers.amqp_url)
    janitor.namespace(namespace)
    yield janitor
    failures = await janitor.clean()
    assert not failures, f"could not clean up RabbitMQ: {failures}"


@pytest.fixture
def jwt_secret() -> str:
    return os.environ["SPINE_JWT_SECRET"]
