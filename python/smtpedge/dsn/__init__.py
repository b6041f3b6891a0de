"""Delivery Status Notifications: deciding when one is due and building it
(``report``), and reading them back, smtpedge's and other MTAs' (``parse``)."""

from smtpedge.dsn.parse import DeliveryReport, DSNParseError, RecipientStatus, parse_report
from smtpedge.dsn.report import (
    ACTIONS,
    OriginalMessage,
    Outcome,
    Report,
    build_report,
    report_wanted,
    status_of,
)

__all__ = [
    "ACTIONS",
    "DSNParseError",
    "DeliveryReport",
    "OriginalMessage",
    "Outcome",
    "RecipientStatus",
    "Report",
    "build_report",
    "parse_report",
    "report_wanted",
    "status_of",
]
