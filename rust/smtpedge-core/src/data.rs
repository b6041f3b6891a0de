//! The DATA stream (RFC 5321 4.5.2): an incremental scanner that finds the
//! end-of-data `CRLF "." CRLF`, undoes dot-stuffing and counts the message
//! against a size limit; plus `dot_stuff` for the client side.
//!
//! Only a real `CRLF "." CRLF` ends a message. A bare LF or bare CR (one not
//! part of a CRLF pair) never ends a line that could end the message, whatever
//! the policy, so the SMTP smuggling payloads (`\n.\n`, `\n.\r\n`, `\r.\r`,
//! `\r\n.\r` ...) can never end it early. With `BareNewline::Reject` (the
//! default) the first bare LF/CR marks the message as failed: the scanner
//! keeps reading to the real terminator so the session stays in sync, and the
//! caller answers with the recorded error. With `BareNewline::Normalize` each
//! bare LF or CR becomes CRLF in the content.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewline {
    Reject,
    Normalize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `real` when it began after a CRLF (or at the
    /// start of the data), the only place a terminator can start.
    LineStart {
        real: bool,
    },
    /// Seen "." at a line start.
    Dot {
        real: bool,
    },
    /// Seen "." CR at a line start.
    DotCr {
        real: bool,
    },
    /// Inside a line.
    Mid,
    /// Seen a CR inside a line.
    Cr,
    Done,
}

/// Why a message failed; the reply is rendered at the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    BareLf,
    BareCr,
    TooBig,
}

impl Failure {
    pub fn reply(self) -> (u16, &'static str, &'static str) {
        match self {
            Failure::BareLf => (
                550,
                "5.5.2",
                "Message contains a bare LF (line endings must be CRLF)",
            ),
            Failure::BareCr => (
                550,
                "5.5.2",
                "Message contains a bare CR (line endings must be CRLF)",
            ),
            Failure::TooBig => (
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    policy: BareNewline,
    max_size: Option<u64>,
    /// Message bytes (after unstuffing and normalising) seen so far.
    pub size: u64,
    /// Stream bytes consumed so far, terminator included.
    pub consumed: u64,
    /// The first failure and the stream offset where it was found.
    pub failure: Option<(Failure, u64)>,
}

impl Scanner {
    pub fn new(max_size: Option<u64>, policy: BareNewline) -> Self {
        Scanner {
            state: State::LineStart { real: true },
            policy,
            max_size,
            size: 0,
            consumed: 0,
            failure: None,
        }
    }

    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    fn fail(&mut self, f: Failure, at: u64) {
        if self.failure.is_none() {
            self.failure = Some((f, at));
        }
    }

    fn bare(&mut self, f: Failure, at: u64) {
        if self.policy == BareNewline::Reject {
            self.fail(f, at);
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8], at: u64) {
        self.size += bytes.len() as u64;
        if let Some(max) = self.max_size {
            if self.size > max {
                self.fail(Failure::TooBig, at);
            }
        }
        if self.failure.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    /// Scan `data`, append the message bytes it holds to `out` and return how
    /// many bytes of `data` belong to the DATA stream (all of them unless the
    /// terminator was found). Nothing is appended once the message has failed.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        if self.state == State::Done {
            return Err(Error::usage(
                "the DATA scanner has already seen the end of data",
            ));
        }
        let base = self.consumed;
        let n = data.len();
        let mut i = 0usize;
        while i < n {
            let at = base + i as u64;
            match self.state {
                State::Mid => {
                    // Copy the run up to the next CR or LF in one go.
                    let run = memchr::memchr2(b'\r', b'\n', &data[i..]).unwrap_or(n - i);
                    if run > 0 {
                        self.emit(out, &data[i..i + run], at);
                        i += run;
                        continue;
                    }
                    if data[i] == b'\r' {
                        self.state = State::Cr;
                    } else {
                        self.bare(Failure::BareLf, at);
                        self.emit(out, b"\r\n", at);
                        self.state = State::LineStart { real: false };
                    }
                    i += 1;
                }
                State::Cr => {
                    if data[i] == b'\n' {
                        self.emit(out, b"\r\n", at);
                        self.state = State::LineStart { real: true };
                        i += 1;
                    } else {
                        self.bare(Failure::BareCr, at - 1);
                        self.emit(out, b"\r\n", at);
                        self.state = State::LineStart { real: false };
                    }
                }
                State::LineStart { real } => {
                    if data[i] == b'.' {
                        self.state = State::Dot { real };
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot { real } => match data[i] {
                    b'\r' => {
                        self.state = State::DotCr { real };
                        i += 1;
                    }
                    b'\n' => {
                        // "." ended by a bare LF: content, never a terminator.
                        self.bare(Failure::BareLf, at);
                        self.emit(out, b".\r\n", at);
                        self.state = State::LineStart { real: false };
                        i += 1;
                    }
                    _ => {
                        // RFC 5321 4.5.2: drop the leading "." of a line with
                        // more characters on it.
                        self.state = State::Mid;
                    }
                },
                State::DotCr { real } => {
                    if data[i] == b'\n' {
                        i += 1;
                        if real {
                            self.state = State::Done;
                            self.consumed = base + i as u64;
                            return Ok(i);
                        }
                        self.emit(out, b".\r\n", at);
                        self.state = State::LineStart { real: true };
                    } else {
                        self.bare(Failure::BareCr, at - 1);
                        self.emit(out, b".\r\n", at);
                        self.state = State::LineStart { real: false };
                    }
                }
                State::Done => unreachable!("returned when the terminator was seen"),
            }
        }
        self.consumed = base + n as u64;
        Ok(n)
    }
}

/// Prepare message content for sending after DATA: line endings made CRLF
/// (a bare CR or LF becomes CRLF), a final CRLF added when missing, a "." put
/// before every line that starts with "." (RFC 5321 4.5.2), and the "." CRLF
/// terminator appended.
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 8);
    let mut at_line_start = true;
    let mut i = 0;
    let n = content.len();
    while i < n {
        if at_line_start && content[i] == b'.' {
            out.push(b'.');
        }
        let run = memchr::memchr2(b'\r', b'\n', &content[i..]).unwrap_or(n - i);
        out.extend_from_slice(&content[i..i + run]);
        i += run;
        if i >= n {
            at_line_start = false;
            break;
        }
        if content[i] == b'\r' && i + 1 < n && content[i + 1] == b'\n' {
            i += 2;
        } else {
            i += 1;
        }
        out.extend_from_slice(b"\r\n");
        at_line_start = true;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]], policy: BareNewline) -> (Vec<u8>, Option<Failure>, usize) {
        let mut s = Scanner::new(None, policy);
        let mut out = Vec::new();
        let mut used = 0;
        for c in chunks {
            used = s.feed(c, &mut out).unwrap();
            if s.done() {
                break;
            }
        }
        (out, s.failure.map(|f| f.0), used)
    }

    #[test]
    fn simple_and_unstuffing() {
        let (out, f, used) = scan(&[b"a\r\n..b\r\n.\r\nQUIT\r\n"], BareNewline::Reject);
        assert_eq!(out, b"a\r\n.b\r\n");
        assert_eq!(f, None);
        assert_eq!(used, 11);
    }

    #[test]
    fn smuggling_does_not_end() {
        for payload in [
            &b"a\n.\nMAIL\r\n"[..],
            b"a\n.\r\nMAIL\r\n",
            b"a\r.\rMAIL\r\n",
            b"a\r\n.\rMAIL\r\n",
        ] {
            let mut s = Scanner::new(None, BareNewline::Reject);
            let mut out = Vec::new();
            assert_eq!(s.feed(payload, &mut out).unwrap(), payload.len());
            assert!(!s.done());
            assert!(s.failure.is_some());
            let mut s = Scanner::new(None, BareNewline::Normalize);
            s.feed(payload, &mut out).unwrap();
            assert!(!s.done());
        }
    }

    #[test]
    fn stuff_roundtrip() {
        let stuffed = dot_stuff(b".a\r\nb\n.\r\nc");
        assert_eq!(stuffed, b"..a\r\nb\r\n..\r\nc\r\n.\r\n");
        let (out, f, _) = scan(&[&stuffed], BareNewline::Reject);
        assert_eq!(out, b".a\r\nb\r\n.\r\nc\r\n");
        assert_eq!(f, None);
    }
}
