"""A whole Flower federation on this machine: one SuperLink and N SuperNodes on 127.0.0.1, then ``flwr run``.

:class:`LocalFederation` starts every Flower process itself, as a separate OS process in its own process group
(session), on free loopback ports, with an environment that keeps Flower offline
(:data:`OFFLINE_ENV`: no telemetry, no update check, no installation of app dependencies) and a private
``FLWR_HOME`` under the run's output directory.  ``stop()`` (also reached on Ctrl-C, on failure and when leaving
the ``with`` block) ends exactly the processes it started and their descendants (the SuperExec, ServerApp and
ClientApp processes Flower spawns): it lists the descendants first, then sends SIGTERM to each started process
group, waits, and SIGKILLs what is left.

Files under ``OUT/flower/``: ``app/pyproject.toml`` (:func:`fltrain.flower.appdir.write_app`),
``run-config.toml`` (the run's config for ``flwr run --run-config``), ``home/`` (``FLWR_HOME``: the SuperLink
address in ``config.toml``, installed app bundles), and one log per process (``superlink.log``,
``supernode-K.log``, ``run.log``).

This module imports neither flwr nor torch; it runs Flower's command-line programs.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import ConfigError
from .appdir import ERROR_PREFIX, NODE_DATA_DIR, NODE_PARTITION, NODE_PARTITIONS, toml_value, write_app

__all__ = [
    "OFFLINE_ENV", "FEDERATION", "FederationError", "free_port", "wait_for_port", "descendants", "LocalFederation",
    "write_run_config",
]

#: set in every Flower process's environment so that nothing leaves this machine
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
#: the name of the local SuperLink in ``FLWR_HOME/config.toml``
FEDERATION = "fltrain-local"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FederationError(RuntimeError):
    """The local federation could not start, or its run failed (the message says why and where the logs are)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; :class:`FederationError` if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FederationError(f"{what} exited with status {process.returncode} while starting; see {log}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s; see {log}")


def descendants(pid: int) -> list[int]:
    """The PIDs of every living descendant of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc").is_dir() else []:
        try:
            text = entry.read_text()
        except OSError:
            continue
        fields_after_name = text[text.rindex(")") + 2:].split()
        children.setdefault(int(fields_after_name[1]), []).append(int(entry.parent.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or ``None`` if it is gone."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[19])


def _running(pid: int, started_at: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``started_at`` and has not exited (a zombie has)."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    after_name = text[text.rindex(")") + 2:].split()
    return after_name[0] != "Z" and int(after_name[19]) == started_at


def write_run_config(path: Path, run_config: Mapping[str, Any]) -> Path:
    """Write a Flower run config (flat keys) as TOML for ``flwr run --run-config``."""
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in run_config.items()))
    return path


def _flower_program(name: str) -> str:
    program = Path(sys.executable).with_name(name)
    if not program.exists():
        raise FederationError(f"Flower's {name!r} is not installed next to {sys.executable}; "
                              f"install the extra: pip install 'dpcalib[flower]'")
    return str(program)


@dataclass
class LocalFederation:
    """One SuperLink and ``nodes`` SuperNodes on 127.0.0.1 (node ``k`` holds partition ``k`` of ``partitions``
    and reads ``data_dir``), started by :meth:`start` and ended by :meth:`stop`."""

    nodes: int
    partitions: int
    data_dir: Path
    workdir: Path
    start_timeout: float = 120.0
    superlink_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: every descendant seen so far (pid → start time): Flower detaches some (the SuperLink's SuperExec starts its
    #: own session), so they are remembered while their parents live and ended by :meth:`stop` all the same
    spawned: dict[int, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.data_dir = Path(self.data_dir).resolve()
        self.home = self.workdir / "home"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every Flower process: offline, private ``FLWR_HOME``, fltrain importable."""
        env = dict(os.environ)
        env.update(OFFLINE_ENV)
        env["FLWR_HOME"] = str(self.home)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _spawn(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        log = kwargs.pop("log", None)
        if log is not None:
            kwargs["stdout"] = open(self.workdir / log, "ab")
            kwargs["stderr"] = subprocess.STDOUT
        try:
            process = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        finally:
            if log is not None:
                kwargs["stdout"].close()
        self.processes[name] = process
        return process

    def track(self) -> None:
        """Remember the current descendants of every started process (see :attr:`spawned`)."""
        for process in self.processes.values():
            if process.poll() is None:
                for pid in descendants(process.pid):
                    self.spawned.setdefault(pid, _start_time(pid))

    def start(self) -> "LocalFederation":
        """Start the SuperLink, wait until it listens, start the SuperNodes and wait until each listens."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        superlink, supernode = _flower_program("flower-superlink"), _flower_program("flower-supernode")
        self.superlink_port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
            f'address = "127.0.0.1:{self.superlink_port}"\ninsecure = true\n'
        )
        link = self._spawn("superlink", [superlink, "--insecure", "--host", "127.0.0.1",
                                         "--port", str(self.superlink_port)], log="superlink.log")
        wait_for_port(self.superlink_port, link, self.start_timeout, "the SuperLink", self.workdir / "superlink.log")
        ports = []
        for k in range(self.nodes):
            port = free_port()
            node_config = (f"{NODE_PARTITION}={k} {NODE_PARTITIONS}={self.partitions} "
                           f"{NODE_DATA_DIR}={toml_value(str(self.data_dir))}")
            self._spawn(f"supernode-{k}", [
                supernode, "--insecure", "--superlink", f"127.0.0.1:{self.superlink_port}", "--host", "127.0.0.1",
                "--port", str(port), "--node-config", node_config,
            ], log=f"supernode-{k}.log")
            ports.append(port)
        for k, port in enumerate(ports):
            wait_for_port(port, self.processes[f"supernode-{k}"], self.start_timeout, f"SuperNode {k}",
                          self.workdir / f"supernode-{k}.log")
        return self

    def run(self, run_config: Mapping[str, Any], on_line: Callable[[str], None] = lambda line: None) -> None:
        """``flwr run`` fltrain's app with ``run_config`` and stream its log; every line goes to ``run.log`` and
        the ``fltrain:`` lines to ``on_line``.

        Raises :class:`fltrain.config.ConfigError` with the server's reason when it refused the run, and
        :class:`FederationError` when the SuperLink dies or the run fails otherwise.
        """
        app = write_app(self.workdir / "app")
        config = write_run_config(self.workdir / "run-config.toml", run_config)
        runner = self._spawn("flwr-run", [_flower_program("flwr"), "run", str(app), FEDERATION, "--stream",
                                          "--run-config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert runner.stdout is not None
            for line in runner.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        refused: str | None = None
        with open(self.workdir / "run.log", "a") as log:
            while True:
                self.track()
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    if self.processes["superlink"].poll() is not None:
                        raise FederationError(f"the SuperLink exited (status {self.processes['superlink'].returncode}) "
                                              f"during the run; see {self.workdir / 'superlink.log'}") from None
                    continue
                if line is None:
                    break
                text = _ANSI.sub("", line).rstrip()
                log.write(text + "\n")
                log.flush()
                if text.startswith(ERROR_PREFIX) and refused is None:
                    refused = text[len(ERROR_PREFIX):]
                elif text.startswith("fltrain:") and refused is None:
                    on_line(text)
        status = runner.wait()
        if refused is not None:
            raise ConfigError(refused)
        link = self.processes["superlink"]
        if link.poll() is not None:
            raise FederationError(f"the SuperLink exited (status {link.returncode}) during the run; "
                                  f"see {self.workdir / 'superlink.log'}")
        if status != 0:
            raise FederationError(f"flwr run exited with status {status}; see {self.workdir / 'run.log'}")

    @staticmethod
    def _signal(pids: Mapping[int, int | None], signum: int) -> None:
        """Send ``signum`` to each of ``pids`` that is still the process it was (same start time)."""
        for pid, started_at in pids.items():
            if started_at is not None and _start_time(pid) == started_at:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, grace: float = 10.0) -> None:
        """End every process this federation started, and their descendants (SIGTERM, then SIGKILL)."""
        started = list(self.processes.values())
        self.track()
        doomed = dict(self.spawned)  # pid -> start time, so that a reused PID is never signalled
        for process in reversed(started):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self._signal(doomed, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.2)
        for process in started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._signal(doomed, signal.SIGKILL)
        for process in started:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
                pass
        deadline = time.monotonic() + 5.0  # a killed process takes a moment to go; orphans are not ours to reap
        while any(_running(pid, started_at) for pid, started_at in doomed.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.processes.clear()
        self.spawned.clear()

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
