"""Routing and delivery: retry rules (``retry``), alias files (``aliases``)
and local maildir delivery (``maildir``), the pieces the queue runner is to be
built from."""
