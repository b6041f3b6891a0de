//! smtpedge-core: the hot paths of smtpedge as pure functions over bytes,
//! and the connection table that worker processes share (`hosttable`, the
//! one module that touches the system: a shared mapping and its lock).
//!
//! No other I/O and no Python here; `smtpedge-py` exposes these to Python as
//! `smtpedge._native`, and `python/smtpedge/_pure` holds their pure-Python
//! twins, which must agree with them on every input.

pub mod certnames;
pub mod crc32c;
pub mod data;
pub mod error;
pub mod hosttable;
pub mod ip;
pub mod proxy;
pub mod smtpline;
pub mod xtext;

pub use error::{Error, ErrorKind, Result};
