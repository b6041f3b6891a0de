"""``smtpedge tlsa create``: the TLSA record to publish for a certificate."""

from __future__ import annotations

import argparse
import sys

from cryptography import x509

from smtpedge.tls.dane import certificate_names, make_record


def _load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)  # the first certificate of the file
    return x509.load_der_x509_certificate(data)


def run(args: argparse.Namespace) -> int:
    try:
        cert = _load(args.certificate)
    except (OSError, ValueError) as exc:
        print(f"smtpedge: cannot read a certificate from {args.certificate}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    host = args.host
    if host is None:
        dns, cns, _ = certificate_names(cert)
        names = [n for n in (dns or cns) if not n.startswith("*")]
        if not names:
            print("smtpedge: the certificate names no host: give --host", file=sys.stderr)
            return 1
        host = names[0]
    record = make_record(cert, args.usage, args.selector, args.mtype)
    problem = record.unusable()
    print(f"_{args.port}._{args.protocol}.{host.rstrip('.')}. IN TLSA {record}")
    if problem:
        print(f"smtpedge: note: an SMTP client will not use this record: {problem}",
              file=sys.stderr)  # fmt: skip
    return 0
