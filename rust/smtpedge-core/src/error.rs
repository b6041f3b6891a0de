//! The one error type of the core: plain data (what went wrong, where), rendered
//! into an exception at the Python boundary.

use std::borrow::Cow;
use std::fmt;

/// Which family of error this is; the binding maps each kind to one Python class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed PROXY protocol header (`ProxyProtocolError`).
    Proxy,
    /// A valid prefix of a PROXY header: at least `needed` more bytes are required
    /// (`IncompleteHeader`).
    Incomplete { needed: usize },
    /// An SMTP command that must be answered with this reply (`SMTPSyntaxError`).
    Smtp { code: u16, status: &'static str },
    /// A malformed SMTP reply line received by a client (`ReplySyntaxError`).
    Reply,
    /// Malformed xtext or utf-8-addr-xtext (`XtextError`).
    Xtext,
    /// Bad arguments given by the local caller (`ValueError`).
    Usage,
}

/// An error with a reason and the byte offset in the input where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub offset: usize,
    pub reason: Cow<'static, str>,
}

impl Error {
    pub fn new(kind: ErrorKind, offset: usize, reason: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            offset,
            reason: reason.into(),
        }
    }

    pub fn proxy(offset: usize, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Proxy, offset, reason)
    }

    pub fn incomplete(needed: usize) -> Self {
        Self::new(
            ErrorKind::Incomplete { needed },
            0,
            "incomplete PROXY header",
        )
    }

    pub fn smtp(
        code: u16,
        status: &'static str,
        offset: usize,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(ErrorKind::Smtp { code, status }, offset, reason)
    }

    pub fn usage(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Usage, 0, reason)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.reason, self.offset)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
