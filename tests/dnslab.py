"""A DNSSEC lab on loopback from Debian's packages: nsd serving zones signed
with ldns-signzone, behind unbound validating with the lab's own trust
anchor. Nothing here touches the system's DNS configuration.

``DNSLab(zones)`` takes zone bodies by name, each under the lab's parent zone
``lab.``: ``{"secure.lab": (body, "signed"), "old.lab": (body, "expired"),
"plain.lab": (body, "unsigned")}``. The parent is signed and carries the DS
of every signed child, so unbound finds ``secure.lab`` secure, ``old.lab``
bogus (its signatures expired) and ``plain.lab`` provably insecure.
``lab.resolver`` is the validating resolver's ``address:port`` for
``dns_nameservers``. A body is zone-file text without SOA and NS (added
here), names relative to the zone.

Pitfalls handled: unbound does not query loopback addresses unless told
(``do-not-query-localhost: no``); SO_REUSEPORT is off; the daemons' output
goes to files; trust-anchor signalling and the root anchor are off;
aggressive NSEC is off, so a name sent to a server that never answers times
out instead of being denied from the parent's cached NSEC records.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from serverutil import free_port, peer

_SOA = "@ 300 IN SOA ns.lab. hostmaster.lab. 1 3600 600 86400 300\n@ 300 IN NS ns.lab.\n"


def _stub(zone: str, address: str) -> str:
    return f'stub-zone:\n  name: "{zone}."\n  stub-addr: {address}\n'


def _free_udp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class DNSLab:
    def __init__(self, zones: dict[str, tuple[str, str]], *,
                 extra_stubs: dict[str, str] | None = None,
                 listen: tuple[str, int] | None = None) -> None:  # fmt: skip
        """``extra_stubs`` sends the queries for a name to another server
        (``{"slow.secure.lab": "127.0.0.1@5300"}``): a server that never
        answers makes lookups under that name time out. ``listen`` puts the
        validating resolver on an address and port of its own (port 53, for
        tools that only read resolv.conf); by default a free port of
        127.0.0.1."""
        self.listen = listen
        self.dir = Path(tempfile.mkdtemp(prefix="smtpedge-dnslab-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self._build(zones)
            self._start(list(zones), extra_stubs or {})
        except BaseException:
            self.stop()
            raise

    # -- zones -----------------------------------------------------------------

    def _keygen(self, zone: str) -> tuple[str, str]:
        """A signing key for ``zone``: its base path and its DS record."""
        done = subprocess.run([peer("ldns-keygen"), "-a", "ECDSAP256SHA256", "-k", zone],
                              cwd=self.dir, capture_output=True, text=True, check=True)  # fmt: skip
        base = done.stdout.strip()
        ds = (self.dir / f"{base}.ds").read_text().strip()
        return base, ds

    def _sign(self, zone: str, body: str, key: str, *, expired: bool = False) -> Path:
        path = self.dir / f"{zone}.zone"
        path.write_text(f"$ORIGIN {zone}.\n$TTL 300\n{_SOA}{body}\n")
        args = [peer("ldns-signzone")]
        if expired:  # signatures that ended long ago: a validator calls the zone bogus
            args += ["-i", "20200101000000", "-e", "20200201000000"]
        else:
            args += ["-e", time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 30 * 86400))]
        subprocess.run([*args, "-f", f"{path}.signed", str(path), key], cwd=self.dir,
                       capture_output=True, text=True, check=True)  # fmt: skip
        return Path(f"{path}.signed")

    def _build(self, zones: dict[str, tuple[str, str]]) -> None:
        self.address = "127.0.0.1"
        self.nsd_port = _free_udp_port()
        self.host, self.port = self.listen or ("127.0.0.1", _free_udp_port())
        files: dict[str, Path] = {}
        parent = ["ns 300 IN A 127.0.0.1"]
        for name, (body, kind) in zones.items():
            child = name.rstrip(".")
            parent.append(f"{child}. 300 IN NS ns.lab.")
            if kind == "unsigned":
                path = self.dir / f"{child}.zone"
                path.write_text(f"$ORIGIN {child}.\n$TTL 300\n{_SOA}{body}\n")
                files[child] = path
                continue
            key, ds = self._keygen(child)
            parent.append(ds)
            files[child] = self._sign(child, body, key, expired=kind == "expired")
        key, self.parent_ds = self._keygen("lab")
        files["lab"] = self._sign("lab", "\n".join(parent), key)
        self.zone_files = files

    # -- daemons ---------------------------------------------------------------

    def _start(self, zones: list[str], extra: dict[str, str]) -> None:
        d = self.dir
        nsd_conf = d / "nsd.conf"
        nsd_conf.write_text(
            "server:\n"
            f"  ip-address: 127.0.0.1@{self.nsd_port}\n"
            '  server-count: 1\n  username: ""\n  chroot: ""\n  reuseport: no\n'
            f'  zonesdir: "{d}"\n  pidfile: "{d}/nsd.pid"\n  logfile: "{d}/nsd.log"\n'
            f'  database: ""\n  xfrdfile: "{d}/xfrd.state"\n'
            f'  zonelistfile: "{d}/zone.list"\n  xfrdir: "{d}"\n  verbosity: 1\n'
            "remote-control:\n  control-enable: no\n"
            + "".join(
                f'zone:\n  name: {z}.\n  zonefile: "{p}"\n' for z, p in self.zone_files.items()
            )
        )
        stubs = [z.rstrip(".") for z in zones] + ["lab"]
        unbound_conf = d / "unbound.conf"
        unbound_conf.write_text(
            "server:\n"
            f"  interface: {self.host}@{self.port}\n  port: {self.port}\n"
            "  access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n"
            '  so-reuseport: no\n  num-threads: 1\n  username: ""\n  chroot: ""\n'
            f'  directory: "{d}"\n  pidfile: "{d}/unbound.pid"\n'
            f'  logfile: "{d}/unbound.log"\n  use-syslog: no\n  verbosity: 1\n'
            "  val-log-level: 2\n  trust-anchor-signaling: no\n  root-key-sentinel: no\n"
            '  module-config: "validator iterator"\n  harden-dnssec-stripped: yes\n'
            "  qname-minimisation: no\n  prefetch: no\n  minimal-responses: no\n"
            f'  trust-anchor: "{self.parent_ds}"\n'
            "  infra-host-ttl: 1\n  serve-expired: no\n  aggressive-nsec: no\n"
            + "".join(
                f'stub-zone:\n  name: "{z}."\n  stub-addr: 127.0.0.1@{self.nsd_port}\n'
                for z in stubs
            )
            + "".join(f'stub-zone:\n  name: "{z}."\n  stub-addr: {a}\n' for z, a in extra.items())
            + "remote-control:\n  control-enable: no\n"
        )
        for args, log in (
            ([peer("nsd"), "-d", "-c", str(nsd_conf)], "nsd.out"),
            ([peer("unbound"), "-d", "-c", str(unbound_conf)], "unbound.out"),
        ):
            with open(d / log, "wb") as out:
                self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
        self._wait_answering()

    def _wait_answering(self, timeout: float = 20.0) -> None:
        """Until unbound answers a query for the lab's own name server
        (which needs nsd up too) with the AD bit."""
        import dns.exception
        import dns.flags
        import dns.message
        import dns.query

        deadline = time.monotonic() + timeout
        query = dns.message.make_query("ns.lab.", "A", want_dnssec=True)
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a DNS lab daemon exited: {self.logs()}")
            try:
                r = dns.query.udp(query, self.host, port=self.port, timeout=0.5)
                if r.answer and r.flags & dns.flags.AD:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DNS lab did not answer securely: {self.logs()}")
            time.sleep(0.02)

    @property
    def resolver(self) -> str:
        return f"{self.host}:{self.port}"

    def resolv_conf(self) -> Path:
        """A resolv.conf naming the resolver (it must listen on port 53),
        trusting its AD bit."""
        path = self.dir / "resolv.conf"
        path.write_text(f"nameserver {self.host}\noptions trust-ad edns0\n")
        return path

    def logs(self) -> str:
        out = []
        for name in ("nsd.log", "nsd.out", "unbound.log", "unbound.out"):
            path = self.dir / name
            if path.exists():
                out.append(f"--- {name}\n{path.read_text()[-3000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> DNSLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
