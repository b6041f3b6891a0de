"""Routing and delivery, in Exim's model: routers (``routers``) decide where
each address goes, transports (``transports``: maildir, smtp) deliver, retry
rules (``retry``) say when to try again, and the queue runner (``runner``)
drives them over the durable queue and sends the delivery reports. Alias
files (``aliases``) and maildir delivery (``maildir``) are the pieces they
stand on."""

from smtpedge.delivery.routers import Routing
from smtpedge.delivery.runner import Delivery, QueueRunner, RunStats

__all__ = ["Delivery", "QueueRunner", "RunStats", "Routing"]
