"""Run inside a private network namespace (``unshare --net``) by
test_ocsp_tools.py: OpenSSL's responder can only listen on every address, so
it gets a namespace whose only interface is loopback. Starts ``openssl ocsp``
as the responder, runs ``smtpedge ocsp fetch`` against it, prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _listening(port: int) -> bool:
    """Is something listening on this TCP port (state 0A in /proc/net)?"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                return True
    return False


def main(directory: str, port: int, out: str) -> None:
    d = Path(directory)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    responder = subprocess.Popen(
        ["openssl", "ocsp", "-index", str(d / "index.txt"), "-port", str(port),
         "-rsigner", str(d / "ca.pem"), "-rkey", str(d / "ca.key"), "-CA", str(d / "ca.pem"),
         "-nmin", "10", "-ignore_err"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Wait for the listening socket without connecting to it: OpenSSL's
    # responder serves one connection at a time and would wait on a probe.
    for _ in range(200):
        if _listening(port):
            break
        time.sleep(0.05)

    def fetch(*args: str) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "smtpedge", "ocsp", "fetch", *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return {"rc": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
                "file": Path(out).read_bytes().hex() if Path(out).exists() else None}  # fmt: skip

    results = {
        "aia": fetch("--cert", str(d / "good-chain.pem"), "--out", out),
        "revoked": fetch("--cert", str(d / "revoked.pem"), "--issuer", str(d / "ca.pem"),
                         "--out", out),
        "wrong_issuer": fetch("--cert", str(d / "good.pem"), "--issuer", str(d / "other.pem"),
                              "--out", out),
        "down": fetch("--cert", str(d / "good-chain.pem"), "--out", out,
                      "--url", f"http://127.0.0.1:{port + 1}"),
    }  # fmt: skip
    responder.terminate()
    responder.wait(10)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
