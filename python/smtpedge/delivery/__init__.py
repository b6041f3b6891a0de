"""Routing and delivery: retry rules (``retry``) and the local maildir
transport (``maildir``), the pieces the queue runner is built from."""
