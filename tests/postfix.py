"""A private Postfix instance on loopback for tests and benchmarks: its own
configuration directory, queue and log, run by its master in the foreground
(``master -c DIR -d``) and stopped with SIGTERM. Debian's Postfix package is
installed with no mail system configured; nothing here touches /etc/postfix."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from serverutil import free_port, peer, wait_port

_QUEUE_DIRS = ("incoming", "active", "deferred", "bounce", "defer", "flush", "hold", "private",
               "saved", "trace", "corrupt")  # fmt: skip

_MASTER = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
{qmgr}qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """``Postfix(next_hop=("127.0.0.1", port))``: smtpd on a free
    loopback port (``.port``) relaying everything from 127.0.0.0/8 to the
    next hop. With ``qmgr=False`` the queue manager does not run: mail stays
    in the queue, durable, as Postfix's smtpd and cleanup wrote it."""

    def __init__(self, next_hop: tuple[str, int] | None = None, *, qmgr: bool = True,
                 hostname: str = "postfix.test",
                 extra: dict[str, str] | None = None) -> None:  # fmt: skip
        peer("postconf")
        # Postfix's daemons run as the postfix user: the instance lives where
        # that user can reach it (pytest's own directories are private).
        directory = Path(tempfile.mkdtemp(prefix="smtpedge-postfix-"))
        os.chmod(directory, 0o755)
        self.dir = directory
        self.port = free_port()
        queue = directory / "queue"
        data = directory / "data"
        for d in _QUEUE_DIRS:
            (queue / d).mkdir(parents=True, exist_ok=True)
            shutil.chown(queue / d, "postfix")
            os.chmod(queue / d, 0o700)
        for d in ("maildrop", "public"):
            (queue / d).mkdir(exist_ok=True)
            shutil.chown(queue / d, "postfix", "postdrop")
        os.chmod(queue / "maildrop", 0o730)
        os.chmod(queue / "public", 0o710)
        (queue / "pid").mkdir(exist_ok=True)
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postfix")
        self.log_file = directory / "maillog"
        # With no next hop, mail is taken and kept (for a queue that does not run).
        next_hop = next_hop or ("127.0.0.1", 9)
        transport = f"smtp:[{next_hop[0]}]:{next_hop[1]}"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(queue),
            "data_directory": str(data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": hostname,
            "mydomain": hostname,
            "myorigin": hostname,
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(directory),
            "smtp_dns_support_level": "disabled",
            "default_transport": transport,
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "command_directory": "/usr/sbin",
            "meta_directory": "/etc/postfix",
            "smtp_tls_security_level": "none",
            "bounce_queue_lifetime": "0",
            "maximal_queue_lifetime": "1d",
        }
        settings.update(extra or {})
        (directory / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (directory / "master.cf").write_text(
            _MASTER.format(listen=f"127.0.0.1:{self.port}", qmgr="" if qmgr else "#")
        )
        self.proc = subprocess.Popen(
            ["/usr/lib/postfix/sbin/master", "-c", str(directory), "-d"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    @property
    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def wait_log(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log):
            if self.proc.poll() is not None:
                raise RuntimeError(f"postfix master exited ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{text!r} not in Postfix's log within {timeout}s")
            time.sleep(0.05)
        return log

    def queued(self) -> list[Path]:
        """The queue files (incoming, active, deferred)."""
        queue = self.dir / "queue"
        return sorted(p for d in ("incoming", "active", "deferred", "hold")
                      for p in (queue / d).rglob("*") if p.is_file())  # fmt: skip

    def postcat(self, path: Path) -> str:
        """A queue file's envelope records, as Postfix's postcat shows them."""
        done = subprocess.run([peer("postcat"), "-c", str(self.dir), "-e", str(path)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
