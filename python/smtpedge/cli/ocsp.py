"""``smtpedge ocsp fetch|serve``: keep OCSP proofs fresh, or answer for a CA."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from smtpedge.log import configure

    configure(None)
    if args.ocsp_command == "fetch":
        from smtpedge.tls import ocsp_fetch

        try:
            cert, issuer = ocsp_fetch.load_chain(
                Path(args.cert), Path(args.issuer) if args.issuer else None
            )
            if args.watch:
                asyncio.run(ocsp_fetch.watch(cert, issuer, Path(args.out), url=args.url,
                                             timeout=args.timeout,
                                             min_interval=args.min_interval))  # fmt: skip
                return 0
            job = ocsp_fetch.fetch_to_file(
                cert, issuer, Path(args.out), url=args.url, timeout=args.timeout
            )
            result = asyncio.run(job)
        except (ocsp_fetch.FetchError, OSError, ValueError) as exc:
            print(f"smtpedge ocsp fetch: {exc}; {args.out} left as it was", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        print(f"{args.out}: {result.reason}")
        return 0
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from smtpedge.config import parse_duration
    from smtpedge.tls.ocsp_responder import Responder, serve

    try:
        ca = x509.load_pem_x509_certificate(Path(args.ca).read_bytes())
        signer = x509.load_pem_x509_certificate(Path(args.signer).read_bytes()) \
            if args.signer else ca  # fmt: skip
        key = serialization.load_pem_private_key(Path(args.key).read_bytes(), None)
        host, _, port = args.listen.rpartition(":")
        validity = dt.timedelta(seconds=parse_duration(args.validity))
        responder = Responder(ca, signer, key, Path(args.index), validity=validity)
        responder._load_index()
    except (OSError, ValueError) as exc:
        print(f"smtpedge ocsp serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(responder, host.strip("[]") or "127.0.0.1", int(port)))
    except KeyboardInterrupt:
        pass
    return 0
