"""``python -m smtpedge``: the same as the ``smtpedge`` command."""

from smtpedge.cli import main

raise SystemExit(main())
