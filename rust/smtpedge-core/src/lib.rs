//! smtpedge-core: the hot paths of smtpedge as pure functions over bytes,
//! the connection table that worker processes share (`hosttable`: a shared
//! mapping and its lock), and the thread that commits accepted messages to
//! the queue (`msgwriter`: SQLite and spool files). Those two are the only
//! modules that touch the system.
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
pub mod msgwriter;
pub mod proxy;
pub mod smtpline;
pub mod xtext;

pub use error::{Error, ErrorKind, Result};
