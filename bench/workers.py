"""`gateway run` processes for the benchmarks that measure them from outside: a working folder
whose gateway.toml points at a database and a sink, and the process started and stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import func, select

from gateway.config import load_settings
from gateway.services.runtime import Runtime
from gateway.store.db import upgrade
from gateway.store.tables import messages


def folder_for(db_url: str | None, sink_port: int, prefix: str) -> tuple[Path, Runtime]:
    """A migrated working folder; `db_url` None: a SQLite file in it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    url = db_url or f"sqlite:///{folder / 'gw.db'}"
    (folder / "gateway.toml").write_text(
        f'[database]\nurl = "{url}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {sink_port}\nsecurity = "none"\nconnections = 8\n'
        'from_address = "Dispatch <dispatch@example.com>"\n'
        "[policy]\nquiet_hours = false\n[sender]\nbatch_size = 200\nidle_poll_seconds = 0.05\n"
    )
    runtime = Runtime(load_settings(folder / "gateway.toml"))
    upgrade(runtime.engine)
    return folder, runtime


def start(folder: Path) -> subprocess.Popen[bytes]:
    """`gateway run` in `folder`, its output in a log file there (read by `why_not_up`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with tempfile.NamedTemporaryFile(dir=folder, prefix="run-", suffix=".log", delete=False) as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def why_not_up(folder: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    """What the processes that exited said: the last lines of each one's log."""
    said = []
    for log in sorted(folder.glob("run-*.log")):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines:
            said.append(f"{log.name}: " + " | ".join(lines[-5:]))
    exited = [p.returncode for p in processes if p.poll() is not None]
    return f"exited: {exited or 'none'}; " + ("; ".join(said) or "no output")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)


def count(runtime: Runtime, state: str) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(messages).where(messages.c.state == state)
            ).scalar_one()
        )
