"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
    """The real `musicgen` entry point in a subprocess, as a user runs it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "musicgen_server", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


# --- a real `musicgen serve` -------------------------------------------------------------------

import atexit  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

_RUNNING: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _RUNNING:
        if process.poll() is None:
            process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_data_dir(data_dir: Path, tiny_folder: Path | None = None) -> Path:
    """A data dir with the tiny model already in it (copied: building it takes seconds)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / "models" / "tiny"
    if tiny_folder is not None and not target.exists():
        shutil.copytree(tiny_folder, target)
    return data_dir


class ServerProcess:
    """One `musicgen serve` subprocess on its own port and data dir. `restart()` starts a new
    process on the same port and data (after `kill()` or `terminate()`)."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int, log_path: Path):
        self.data_dir = data_dir
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    # -- life ---------------------------------------------------------------------------------
    def start(self, ready: bool = True, timeout: float = 90) -> ServerProcess:
        log = open(self.log_path, "ab")
        command = [sys.executable, "-m", "musicgen_server", "serve", "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _RUNNING.append(self.process)
        if ready:
            self.wait_ready(timeout)
        else:
            self.wait_healthy(timeout)
        return self

    def restart(self, ready: bool = True, timeout: float = 90, **env: str) -> ServerProcess:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self.env = {**self.env, **env}
        return self.start(ready=ready, timeout=timeout)

    def _wait_for(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.logs()[-4000:]}")
            try:
                response = httpx.get(self.url + path, timeout=2)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            except httpx.TransportError as error:
                last = repr(error)
            time.sleep(0.1)
        raise TimeoutError(f"{path} not 200 after {timeout}s ({last}):\n{self.logs()[-4000:]}")

    def wait_healthy(self, timeout: float = 90) -> None:
        self._wait_for("/health", timeout)

    def wait_ready(self, timeout: float = 90) -> None:
        self._wait_for("/ready", timeout)

    def kill(self) -> None:
        """SIGKILL: no drain, no clean-up, as when a machine dies."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the server drains, then exits."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- talking to it ------------------------------------------------------------------------
    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)


def start_server(
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *,
    tiny_folder: Path | None = None,
    ready: bool = True,
    timeout: float = 90,
    port: int | None = None,
) -> ServerProcess:
    """Start `musicgen serve` with MUSICGEN_MODEL=tiny on a free port and a data dir under
    `tmp_path`, and wait until /ready (or only /health with `ready=False`). `env` adds or
    overrides variables. Stop it with `server.stop()` (the `start_server` fixture does)."""
    data_dir = prepare_data_dir(tmp_path / "data", tiny_folder)
    full_env = dict(os.environ)
    full_env.update({"MUSICGEN_MODEL": "tiny", "MUSICGEN_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"})
    full_env.update(env or {})
    server = ServerProcess(data_dir, full_env, port or free_port(), tmp_path / "server.log")
    try:
        return server.start(ready=ready, timeout=timeout)
    except BaseException:
        server.stop()
        raise


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    """Poll until `predicate()` returns something truthy; return it, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        time.sleep(interval)
