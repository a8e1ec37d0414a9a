"""Private RabbitMQ and PostgreSQL servers that a chaos run may stop, kill and restart.

The machine's own servers (5672, 5432) serve every other test, so they are never restarted.
`PrivateRabbit` runs a second RabbitMQ node (its own node name, ports, Mnesia directory,
config, plugins file and Erlang cookie, nothing read from /etc/rabbitmq) and `PrivatePostgres`
a throw-away cluster made by `initdb` in a temporary directory. Both are controlled with the
servers' own tools — `rabbitmqctl -n <node>`, `pg_ctl` — and killed only by their own pid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.stack import IsolatedStack

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def stable_port() -> int:
    """A free port below the ephemeral range, for a server that will be stopped and started.

    A port the OS hands out (`free_port`) lies in the ephemeral range, so while its server is
    down, any outgoing connection on the machine may take it as its local port, and the server
    cannot listen again. Below the range, only another listener can take it.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise ServerError("no free port below the ephemeral range")


@dataclass
class RestartableStack(IsolatedStack):
    """The isolated stack on `stable_port()`s, since the chaos run kills and restarts services."""

    def spawn(self) -> None:
        self.ports.update({s.name: stable_port() for s in self.services if s.name not in self.ports})
        super().spawn()


class ServerError(RuntimeError):
    """A private server would not start, stop or answer."""


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise ServerError(f"{' '.join(args)} exited with {done.returncode}:\n"
                          f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done


def private_servers_available() -> str | None:
    """None when both servers' binaries are installed here, else what is missing."""
    missing = [str(p) for p in (RABBIT_BIN / "rabbitmq-server", RABBIT_BIN / "rabbitmqctl",
                                PG_BIN / "initdb", PG_BIN / "pg_ctl") if not p.exists()]
    return f"not installed: {', '.join(missing)}" if missing else None


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of our own; `start()`, then `destroy()` in a `finally`."""

    name: str = field(default_factory=lambda: f"spinechaos{secrets.token_hex(3)}")
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="spine-rabbit-")))
    port: int = field(default_factory=stable_port)
    dist_port: int = field(default_factory=stable_port)

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.base / "log" / f"{self.node}.log"

    def _env(self) -> dict[str, str]:
        # Every path the node would otherwise take from /etc/rabbitmq or /var/lib/rabbitmq is
        # ours, so that nothing here can reach the machine's own node (rabbit@localhost).
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),  # the Erlang cookie is read from (and written to) $HOME
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "LANG": "C.UTF-8",
        }

    def ctl(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """`rabbitmqctl -n <our node> args…`; returns its standard output."""
        done = _run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self._env(),
                    timeout=timeout, check=check)
        return done.stdout

    def start(self) -> PrivateRabbit:
        """Write the node's files (first time), start it detached and wait until it serves."""
        if not (self.base / "rabbitmq.conf").exists():
            (self.base / "rabbitmq-env.conf").write_text("")
            (self.base / "enabled_plugins").write_text("[].\n")
            (self.base / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
            cookie = self.base / ".erlang.cookie"
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        _run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self._env())
        self.wait_running()
        return self

    def wait_running(self, timeout: float = 90.0) -> None:
        """Until the node's `rabbit` application is up (the node may still be registering)."""
        deadline = time.monotonic() + timeout
        while True:
            done = _run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, "await_startup",
                         "--timeout", "20"], env=self._env(), timeout=60, check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"{self.node} did not start: {done.stderr[-1000:]}\n"
                                  f"{self.log_tail()}")
            time.sleep(0.5)

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.base / "pid").read_text().strip())
        return None

    def stop_app(self) -> None:
        """A graceful stop of the broker (the Erlang node stays up)."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60.0) -> None:
        # Right after stop_app the old listener may still hold the port for a moment.
        deadline = time.monotonic() + timeout
        while True:
            done = _run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, "start_app"],
                        env=self._env(), check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"start_app failed: {done.stdout}{done.stderr}")
            time.sleep(1.0)

    def kill(self) -> None:
        """SIGKILL the node's own process (by its pid file), as a crash or an OOM kill would."""
        pid = self.pid()
        if pid is None:
            raise ServerError(f"{self.node} has no pid file")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        (self.base / "pid").unlink(missing_ok=True)

    def restart_killed(self) -> None:
        """Start the node again on the same data after `kill()`."""
        _run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self._env())
        self.wait_running()

    def queue_consumers(self) -> dict[str, int]:
        """Queue name → consumer count, as the broker itself reports it."""
        out = self.ctl("list_queues", "name", "consumers", "--no-table-headers", "--quiet")
        counts = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
        return counts

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def destroy(self) -> None:
        """Stop the node (kill it if it will not stop) and delete its directory."""
        pid = self.pid()
        if pid is not None and _alive(pid):
            _run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, "stop"], env=self._env(),
                 timeout=60, check=False)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own (trust auth, loopback only); `destroy()` when done."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="spine-pg-")))
    port: int = field(default_factory=stable_port)

    @property
    def pg_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def _as_postgres(self, *args: str, timeout: float = 120.0) -> None:
        # initdb and the server refuse to run as root; the cluster belongs to `postgres`.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        _run([*prefix, *args], timeout=timeout)

    def _options(self) -> str:
        # fsync off: a server crash (not an OS crash) loses nothing, and the shared CPU is slow.
        return (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=300")

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            if os.geteuid() == 0:
                os.chown(self.base, pwd.getpwnam("postgres").pw_uid, -1)
            self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                              "-U", "postgres", "--no-sync")
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.base / "log"), "-o", self._options(), "-w", "start")
        return self

    def restart_immediate(self) -> None:
        """`pg_ctl restart -m immediate`: every backend dies at once, then crash recovery."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.base / "log"), "-m", "immediate", "-o", self._options(),
                          "-w", "restart")

    def stop_immediate(self) -> None:
        """`pg_ctl stop -m immediate`: every backend dies at once; `start()` recovers."""
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.base / "log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
                self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                                  "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); its /proc status says it is gone.
    with contextlib.suppress(OSError):
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False
