"""Helpers of the slow suite: free ports, services in their own process group, bounded waits.

Every process a slow test starts runs in a new session (its own process group), so stopping it
also stops what it started (an MLflow server's uvicorn workers, a sweep's worker processes).
Every wait has a deadline and fails with what it was waiting for and the service's log tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import optuna
import pytest

from pipeline.config import PROJECT_ROOT

SMOKE = PROJECT_ROOT / "studies" / "smoke.yaml"
ARTIFACTS_DIR = PROJECT_ROOT / "test-artifacts"  # screenshots (gitignored)
# A study of seconds (1-layer nets, 4 steps an epoch) for the tests that need a finished one:
# the base and a search space; each test adds its objective(s) and budget.
TINY_STUDY = """
base:
  data: {name: grid25, n_points: 1024}
  model: {g_hidden: [16], d_hidden: [16]}
  train: {batch_size: 128, steps_per_epoch: 4, log_every_n_steps: 4, sample_every_n_epochs: 2,
          threads: 1}
  eval: {n_samples: 200, metrics: [modes_covered, high_quality, reverse_kl, pacgan_score]}
sampler: {name: random, seed: 0}
search_space:
  model.g_layers: {type: int, low: 1, high: 2}
  model.g_width: {type: categorical, choices: [8, 16, 32]}
"""


# MLflow 3 sends usage telemetry from clients and servers unless told not to: these tests talk to
# 127.0.0.1 only.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """For this process and the worker processes it spawns."""
    for key, value in NO_TELEMETRY.items():
        monkeypatch.setenv(key, value)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, *,
               interval: float = 0.5, alive: Callable[[], str | None] | None = None) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` s, or as soon as ``alive``
    reports (returns a message) that what we wait for can no longer happen."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if alive is not None:
            dead = alive()
            if dead:
                raise AssertionError(f"gave up waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def kill_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group led by ``proc`` (started with start_new_session=True, so the
    group id is its pid), give the leader ``grace`` s, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace if sig == signal.SIGTERM else 10)


class Service:
    """A long-running command (a server) in its own process group, logging to a file."""

    def __init__(self, name: str, cmd: Sequence[str], *, log: Path, cwd: Path,
                 env: Mapping[str, str]) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log
        self._log_file: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=dict(env), stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def dead(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        return f"{self.name} exited with code {code}; log {self.log}:\n{log_tail(self.log)}"

    def wait_http(self, url: str, timeout: float) -> None:
        wait_until(lambda: http_ok(url), timeout, f"{self.name} to answer {url} "
                   f"(log {self.log})", alive=self.dead)

    def stop(self) -> None:
        kill_group(self.proc)
        self._log_file.close()


def run_commands(cmds: Sequence[Sequence[str]], *, cwd: Path, env: Mapping[str, str],
                 timeout: float, logs: Sequence[Path]) -> list[tuple[int, str]]:
    """Run ``cmds`` together (machines sharing a study), each to completion in its own process
    group (its children included), output to its ``logs`` entry; if they are not all done within
    ``timeout``, kill the groups and fail. Returns (exit code, output) per command."""
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        procs = []
        for cmd, log in zip(cmds, logs, strict=True):
            out = stack.enter_context(open(log, "wb"))
            procs.append(subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        try:
            codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(cmds[0])} (and {len(cmds) - 1} more) did not "
                                 f"finish in {timeout:.0f} s; log {logs[0]}:\n"
                                 f"{log_tail(logs[0])}") from None
        finally:
            for proc in procs:
                kill_group(proc, grace=5)  # workers it left behind, if any
    return [(code, log.read_text(errors="replace")) for code, log in zip(codes, logs, strict=True)]


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus the user's study/tracking settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                      env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(NO_TELEMETRY)
    env.update(extra)
    return env


PYTHON = sys.executable


def ran_concurrently(trials: Sequence[optuna.trial.FrozenTrial]) -> bool:
    """Whether some trial started before an earlier one completed (workers side by side)."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials
                   if t.datetime_start and t.datetime_complete)
    latest_end = None
    for begin, end in spans:
        if latest_end is not None and begin < latest_end:
            return True
        latest_end = end if latest_end is None else max(latest_end, end)
    return False
