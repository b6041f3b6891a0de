"""``smtpedge ctl``: signal the server that holds a data directory."""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time

from smtpedge.config import Config

__all__ = ["run", "server_pid"]


def server_pid(config: Config) -> int | None:
    """The PID of the ``smtpedge serve`` holding the data directory, or None
    when none does (its lock file is not locked)."""
    path = config.spool_path / "smtpedge.pid"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it
    finally:
        os.close(fd)


def run(args: argparse.Namespace, config: Config) -> int:
    pid = server_pid(config)
    where = config.spool_path
    if pid is None:
        print(f"smtpedge: no server runs on the data directory {where}",
              file=sys.stderr if args.ctl_command != "status" else sys.stdout)  # fmt: skip
        return 1 if args.ctl_command != "status" else 3
    if args.ctl_command == "status":
        print(f"smtpedge serve runs on {where} (PID {pid})")
        return 0
    sig = signal.SIGHUP if args.ctl_command == "reload" else signal.SIGTERM
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        print(f"smtpedge: process {pid} is gone", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"smtpedge: not allowed to signal process {pid}", file=sys.stderr)
        return 1
    if args.ctl_command == "reload":
        print(f"smtpedge: asked process {pid} to reload (see its log for the outcome)")
        return 0
    print(f"smtpedge: process {pid} is draining")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while server_pid(config) is not None:
        if time.monotonic() > deadline:
            print(f"smtpedge: process {pid} still runs after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"smtpedge: process {pid} has exited")
    return 0
