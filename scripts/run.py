"""Run the four services as real processes with labelled output; Ctrl-C stops them all (`make run`).

Nothing is restarted: a service that dies takes the others down, and the exit code says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python scripts/run.py` puts scripts/ first, not the root
    sys.path.insert(0, str(REPO_ROOT))

from shared.registry import SERVICES, Service  # noqa: E402

LABEL_WIDTH = max(len(service.name) for service in SERVICES)
# ANSI colours, handed out in registry order: each service's lines keep one colour.
PALETTE = (36, 35, 33, 32, 34, 31)
COLOURS = {service.name: PALETTE[i % len(PALETTE)] for i, service in enumerate(SERVICES)}
STOP_TIMEOUT_S = 25.0
READY_TIMEOUT_S = 90.0

USE_COLOUR = sys.stdout.isatty() and "NO_COLOR" not in os.environ


def paint(text: str, colour: int) -> str:
    return f"\033[{colour}m{text}\033[0m" if USE_COLOUR else text


def emit(line: str) -> None:
    """Print one line; if our reader went away (`make run | head`), carry on shutting down quietly."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def say(text: str) -> None:
    """A line from the runner itself, labelled so it stands out from the services' lines."""
    emit(f"{paint('spine'.ljust(LABEL_WIDTH), 1)} | {text}")


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the runner is killed outright, so no service is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    port: int
    process: asyncio.subprocess.Process
    pump: asyncio.Task[None] = field(init=False)

    @property
    def label(self) -> str:
        return paint(self.name.ljust(LABEL_WIDTH), COLOURS.get(self.name, 37))


async def start(service: Service, env: dict[str, str]) -> Child:
    # Own session (process group): a terminal Ctrl-C reaches only this runner, which then sends
    # exactly one SIGTERM. A second signal would make uvicorn skip its graceful shutdown.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", service.module,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        limit=1 << 20,
    )
    child = Child(service.name, service.http_port, process)
    child.pump = asyncio.create_task(pump(child))
    return child


async def pump(child: Child) -> None:
    """Copy the child's merged output, one labelled line at a time, until it closes."""
    assert child.process.stdout is not None  # nosec B101 # narrows a type: spawned with PIPE
    stream = child.process.stdout
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the buffer: print what there is
            line = await stream.read(1 << 20)
        if not line:
            return
        text = line.decode("utf-8", errors="replace").rstrip("\n")
        emit(f"{child.label} | {text}")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # lines appear as they are written, not when a buffer fills
    # One SPINE_HTTP_PORT would put all four services on the same port; each keeps its own.
    env.pop("SPINE_HTTP_PORT", None)
    return env


def base_url(port: int) -> str:
    host = os.environ.get("SPINE_HTTP_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):  # nosec B104 # compares, binds nothing: the client's address
        host = "127.0.0.1"
    return f"http://{host}:{port}"


async def wait_until_ready(children: list[Child]) -> None:
    """Poll /readyz of every service; print the banner once all answer 200."""
    pending = {c.name: c for c in children}
    last: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2.0) as client:
        while pending:
            for name, child in list(pending.items()):
                try:
                    response = await client.get(f"{base_url(child.port)}/readyz")
                    if response.status_code == 200:
                        del pending[name]
                        continue
                    last[name] = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last[name] = f"{exc.__class__.__name__}"
            if not pending:
                break
            if loop.time() > deadline:
                for name in pending:
                    say(f"{name} is not ready after {READY_TIMEOUT_S:.0f} s: {last.get(name)}")
                say("still running; fix the cause above or press Ctrl-C")
                return
            await asyncio.sleep(0.5)
    banner(children)


def banner(children: list[Child]) -> None:
    say("all services are ready")
    for child in children:
        say(f"  {child.name.ljust(LABEL_WIDTH)}  {base_url(child.port)}/docs")
    say("next, in another terminal:")
    say("  ./spine token --role sales")
    say("  ./spine submit-order --system mes --customer C-100 --line P-200:5")
    say("  ./spine watch")
    say("  ./spine dlq list")
    say("Ctrl-C stops everything")


def exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


async def stop(children: list[Child]) -> None:
    """SIGTERM to everyone still running, SIGKILL to whoever is left after the timeout."""
    running = [c for c in children if c.process.returncode is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGTERM)
    if running:
        say(f"stopping {', '.join(c.name for c in running)} (up to {STOP_TIMEOUT_S:.0f} s)")
        waits = [asyncio.create_task(c.process.wait()) for c in running]
        _, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)
        for task in late:
            task.cancel()
    for child in running:
        if child.process.returncode is None:
            say(f"{child.name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            await child.process.wait()
        elif child.process.returncode in (0, -signal.SIGTERM):
            # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
            say(f"{child.name} stopped")
        else:
            say(f"{child.name} stopped ({exit_status(child.process.returncode)})")
    await asyncio.gather(*(c.pump for c in children), return_exceptions=True)


async def run() -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    env = child_env()
    children = [await start(service, env) for service in SERVICES]
    say(f"started {', '.join(f'{c.name} (pid {c.process.pid})' for c in children)}")
    ready = asyncio.create_task(wait_until_ready(children))

    exits = {asyncio.create_task(c.process.wait()): c for c in children}
    stop_wait = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([*exits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    code = 0
    if stop_wait not in done:
        for task in done:
            child = exits[task]
            say(f"{child.name} exited unexpectedly ({exit_status(child.process.returncode)}); "
                "stopping the others")
        code = 1
    else:
        say("interrupted; shutting down")
    stop_wait.cancel()
    await stop(children)
    for task in exits:
        task.cancel()
    return code


def main() -> int:
    """Entry point of `scripts/run.py`."""
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
