"""Start, use and stop a real TorchServe for tests and benchmarks. Every wait is time-bound.

    with TorchServe(workdir, prefix=[sys.executable, "-m", "instrument", "--out", out, "--"],
                    env=env) as ts:
        ts.register("tiny.mar", workers=2, batch_size=4, max_batch_delay_ms=100)
        status, headers, body = ts.predict("tiny", {"x": [1, 2, 3, 4]})

``stop()`` (also run on any exception inside the ``with``) calls ``torchserve --stop
--foreground`` and waits for the frontend *and* every worker to be gone; anything still alive
after the timeout is killed by pid (only the processes this harness started).

Isolation: the frontend's pid file lives in ``tempfile.gettempdir()`` of the ``torchserve``
CLI, so ``TMPDIR``/``TEMP`` point into the work folder; ports are free ones on 127.0.0.1;
logs and metrics go into the work folder; token auth is off; no config snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
ASSETS = Path(__file__).parent / "torchserve_assets"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def archive(
    model_name: str, handler: str | Path, export_dir: Path, version: str = "1.0", timeout=60
) -> Path:
    """torch-model-archiver without weights: the handlers build their model in code.

    ``handler`` is a file path, or ``path/module:function`` (no ``.py``) for a function handler.
    The archiver stages files in ``tempfile.gettempdir()/<model_name>``: a private TMPDIR keeps
    concurrent runs apart."""
    export_dir.mkdir(parents=True, exist_ok=True)
    staging = export_dir.parent / "archiver-tmp"
    staging.mkdir(exist_ok=True)
    subprocess.run(
        [
            str(BIN / "torch-model-archiver"),
            "--model-name", model_name,
            "--version", version,
            "--handler", str(handler),
            "--export-path", str(export_dir),
            "--force",
        ],
        check=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "TMPDIR": str(staging)},
    )  # fmt: skip
    return export_dir / f"{model_name}.mar"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """All descendants of pid (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class TorchServe:
    def __init__(
        self,
        workdir: Path,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
        config_extra: dict[str, str] | None = None,
        start_timeout: float = 90,
    ) -> None:
        self.workdir = Path(workdir)
        self.prefix = list(prefix or [])
        self.store = self.workdir / "model-store"
        self.tmp = self.workdir / "tmp"
        # Workers listen on unix sockets in TMPDIR: keep the path under the 107-byte limit.
        if len(str(self.tmp)) > 60:
            self.tmp = Path(tempfile.mkdtemp(prefix="ts-"))
            self._cleanup_tmp = True
        else:
            self._cleanup_tmp = False
        self.logs = self.workdir / "logs"
        for d in (self.store, self.tmp, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.inference_port, self.management_port, self.metrics_port = free_ports(3)
        self.env = dict(os.environ if env is None else env)
        self.env.update(
            TMPDIR=str(self.tmp),
            TEMP=str(self.tmp),
            LOG_LOCATION=str(self.logs),
            METRICS_LOCATION=str(self.logs),
        )
        self.config = self.workdir / "config.properties"
        props = {
            "inference_address": f"http://127.0.0.1:{self.inference_port}",
            "management_address": f"http://127.0.0.1:{self.management_port}",
            "metrics_address": f"http://127.0.0.1:{self.metrics_port}",
            "model_store": str(self.store),
            "disable_token_authorization": "true",
            "enable_model_api": "true",
            "enable_envvars_config": "false",
            "install_py_dep_per_model": "false",
            "default_response_timeout": "60",
        }
        props.update(config_extra or {})
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.start_timeout = start_timeout
        self.frontend_pid: int | None = None
        self.started = False
        self.output: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def _cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        cmd = [*self.prefix, str(BIN / "torchserve"), *args]
        # Output to a file, not a pipe: the Java frontend inherits the CLI's stdout/stderr and
        # keeps them open, so reading a pipe to its end would wait for the server to stop.
        log = self.logs / "cli.out"
        with open(log, "ab") as f:
            start = f.tell()
            r = subprocess.run(
                cmd, cwd=self.workdir, env=self.env, stdout=f, stderr=f, timeout=timeout
            )
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        self.output.append(f"$ {' '.join(cmd)} -> {r.returncode}\n{text}")
        return r

    def start(self) -> None:
        self.started = True  # from here on stop() must run, whatever happens
        r = self._cli(
            "--start",
            "--ncs",
            "--disable-token-auth",
            "--model-store", str(self.store),
            "--ts-config", str(self.config),
            timeout=60,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"torchserve --start failed:\n{self.output[-1]}")
        pid_file = self.tmp / ".model_server.pid"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.frontend_pid is None and pid_file.exists():
                try:
                    self.frontend_pid = int(pid_file.read_text().strip())
                except ValueError:
                    pass
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.inference_port}/ping", timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.frontend_pid is not None and not _pid_alive(self.frontend_pid):
                raise RuntimeError(f"TorchServe frontend died at start\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"TorchServe not healthy after {self.start_timeout}s\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        return _children(self.frontend_pid) if self.frontend_pid else []

    def stop(self, timeout: float = 60) -> None:
        """``torchserve --stop``, then wait for the frontend and its workers to be gone."""
        if not self.started:
            return
        self.started = False
        procs = ([self.frontend_pid] if self.frontend_pid else []) + self.worker_pids()
        try:
            self._cli("--stop", "--foreground", timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_pid_alive(p) for p in procs):
            time.sleep(0.1)
        for p in procs:  # last resort, only for processes this harness started
            if _pid_alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        if self._cleanup_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> TorchServe:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        out = []
        for name in ("ts_log.log", "model_log.log"):
            p = self.logs / name
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(out + self.output)

    # -- API -----------------------------------------------------------------------------------
    def register(
        self,
        mar: str,
        workers: int = 1,
        batch_size: int = 1,
        max_batch_delay_ms: int = 100,
        timeout: float = 90,
    ) -> None:
        url = (
            f"http://127.0.0.1:{self.management_port}/models?url={mar}"
            f"&initial_workers={workers}&batch_size={batch_size}"
            f"&max_batch_delay={max_batch_delay_ms}&synchronous=true"
        )
        req = urllib.request.Request(url, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"register {mar}: HTTP {resp.status}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"register {mar}: {e} {e.read()!r}\n{self.log_tail()}") from e

    def predict(
        self, model: str, body: dict, timeout: float = 30
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.inference_port}/predictions/{model}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
