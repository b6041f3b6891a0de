"""Argument checks that make the pure-Python twins accept exactly what the
Rust extension accepts (bytes or bytearray for data, str for text)."""

from __future__ import annotations


def as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    raise TypeError(f"argument '{name}': expected bytes or bytearray, not {type(value).__name__}")


def as_str(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"argument '{name}': expected str, not {type(value).__name__}")
