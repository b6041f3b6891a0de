//! SMTP command lines (RFC 5321 section 4.1, RFC 6531) and reply lines.
//!
//! A syntax error is an `ErrorKind::Smtp` carrying the reply the server should
//! send, so callers never invent codes of their own.

use crate::error::{Error, Result};
use crate::ip;

/// RFC 5321 4.5.3.1.3: a path is at most 256 octets, "<" and ">" included.
pub const MAX_PATH: usize = 256;
/// RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
pub const MAX_DOMAIN: usize = 255;
/// Default command line limit, CRLF included. RFC 5321 4.5.3.1.4 sets 512 and
/// lets extensions raise it (SIZE, DSN's ENVID/ORCPT, SMTPUTF8 ...); 2048 is
/// the customary limit of mature servers.
pub const DEFAULT_MAX_LINE: usize = 2048;

/// The verbs this parser knows.
pub const VERBS: [&str; 14] = [
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT",
    "STARTTLS", "AUTH",
];

/// A mailbox path. The null reverse-path `<>` has an empty local part and
/// domain; `<Postmaster>` has no domain. Both parts are kept as written
/// (a quoted local part keeps its quotes, an address literal its brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub local_part: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub verb: &'static str,
    pub argument: Option<String>,
    pub path: Option<Path>,
    pub params: Vec<(String, Option<String>)>,
    pub chunk_size: Option<u64>,
    pub last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// False on a continuation line ("250-...").
    pub last: bool,
    /// RFC 3463 enhanced status code, when the text starts with one.
    pub status: Option<String>,
    pub text: String,
}

fn strip_eol(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line)
}

fn syntax(offset: usize, text: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::smtp(501, "5.5.4", offset, text)
}

/// Parse one command line (with or without its CRLF).
///
/// `smtputf8` allows UTF-8 in addresses and parameter values (RFC 6531);
/// `max_length` bounds the line, CRLF included.
pub fn parse_command(line: &[u8], smtputf8: bool, max_length: usize) -> Result<Command> {
    if line.len() > max_length {
        return Err(Error::smtp(500, "5.5.2", max_length, "Line too long"));
    }
    let line = strip_eol(line);
    if let Some(i) = line.iter().position(|&b| b < 0x20 || b == 0x7f) {
        return Err(Error::smtp(500, "5.5.2", i, "Control character in command"));
    }
    if smtputf8 {
        if let Err(e) = std::str::from_utf8(line) {
            return Err(Error::smtp(
                500,
                "5.5.2",
                e.valid_up_to(),
                "Invalid UTF-8 in command",
            ));
        }
    }
    let vend = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb_bytes = &line[..vend];
    let verb = VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(verb_bytes))
        .copied()
        .ok_or_else(|| Error::smtp(500, "5.5.1", 0, "Command not recognized"))?;
    let mut cmd = Command {
        verb,
        argument: None,
        path: None,
        params: Vec::new(),
        chunk_size: None,
        last: false,
    };
    // The argument: what follows the verb, without surrounding spaces.
    let mut astart = vend;
    while astart < line.len() && line[astart] == b' ' {
        astart += 1;
    }
    let mut aend = line.len();
    while aend > astart && line[aend - 1] == b' ' {
        aend -= 1;
    }
    let arg = &line[astart..aend];
    if !smtputf8 && !matches!(verb, "MAIL" | "RCPT") {
        if let Some(i) = arg.iter().position(|&b| b >= 0x80) {
            return Err(Error::smtp(
                500,
                "5.5.2",
                astart + i,
                "Non-ASCII characters in command",
            ));
        }
    }
    if !arg.is_empty() {
        // Valid UTF-8 here: checked above, or ASCII, or a MAIL/RCPT argument
        // whose non-ASCII bytes the path and parameter parsers refuse.
        cmd.argument = Some(String::from_utf8_lossy(arg).into_owned());
    }
    match verb {
        "EHLO" | "HELO" if arg.is_empty() => Err(syntax(vend, format!("Syntax: {verb} hostname"))),
        "VRFY" | "EXPN" if arg.is_empty() => Err(syntax(vend, format!("Syntax: {verb} address"))),
        "AUTH" if arg.is_empty() => Err(syntax(vend, "Syntax: AUTH mechanism [initial-response]")),
        "DATA" | "RSET" | "QUIT" | "STARTTLS" if !arg.is_empty() => {
            Err(syntax(astart, format!("Syntax: {verb} (no arguments)")))
        }
        "MAIL" | "RCPT" => {
            parse_mail_rcpt(&mut cmd, line, astart, aend, smtputf8)?;
            Ok(cmd)
        }
        "BDAT" => {
            parse_bdat(&mut cmd, arg, astart)?;
            Ok(cmd)
        }
        _ => Ok(cmd),
    }
}

fn parse_bdat(cmd: &mut Command, arg: &[u8], astart: usize) -> Result<()> {
    let err = || syntax(astart, "Syntax: BDAT chunk-size [LAST]");
    let (size, rest) = match arg.iter().position(|&b| b == b' ') {
        Some(i) => (&arg[..i], Some(&arg[i + 1..])),
        None => (arg, None),
    };
    if size.is_empty() || size.len() > 19 || !size.iter().all(u8::is_ascii_digit) {
        return Err(err());
    }
    cmd.chunk_size = Some(size.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0')));
    match rest {
        None => Ok(()),
        Some(r) if r.eq_ignore_ascii_case(b"LAST") => {
            cmd.last = true;
            Ok(())
        }
        Some(_) => Err(err()),
    }
}

/// Who a path belongs to, for the reply texts and enhanced codes.
#[derive(Clone, Copy)]
struct Role {
    mail: bool,
}

impl Role {
    fn status(self) -> &'static str {
        if self.mail {
            "5.1.7"
        } else {
            "5.1.3"
        }
    }
    fn name(self) -> &'static str {
        if self.mail {
            "sender"
        } else {
            "recipient"
        }
    }
    fn bad(self, offset: usize, what: &str) -> Error {
        Error::smtp(
            553,
            self.status(),
            offset,
            format!("Bad {} address syntax: {what}", self.name()),
        )
    }
}

// MAIL FROM:<reverse-path> [SP Mail-parameters]
// RCPT TO:<forward-path> [SP Rcpt-parameters]   (RFC 5321 4.1.2)
fn parse_mail_rcpt(
    cmd: &mut Command,
    line: &[u8],
    astart: usize,
    aend: usize,
    smtputf8: bool,
) -> Result<()> {
    let role = Role {
        mail: cmd.verb == "MAIL",
    };
    let (kw, usage): (&[u8], &'static str) = if role.mail {
        (b"FROM:", "Syntax: MAIL FROM:<address>")
    } else {
        (b"TO:", "Syntax: RCPT TO:<address>")
    };
    let arg = &line[..aend];
    if arg.len() < astart + kw.len() || !arg[astart..astart + kw.len()].eq_ignore_ascii_case(kw) {
        return Err(syntax(astart, usage));
    }
    let mut p = astart + kw.len();
    // Tolerate spaces after the colon, as many clients send them.
    while p < aend && arg[p] == b' ' {
        p += 1;
    }
    if p >= aend || arg[p] != b'<' {
        return Err(syntax(p, usage));
    }
    let (path, end) = parse_path(arg, p, role, smtputf8)?;
    cmd.path = Some(path);
    if end < aend {
        if arg[end] != b' ' {
            return Err(syntax(end, "Syntax error after the address"));
        }
        cmd.params = parse_params(arg, end, smtputf8)?;
    }
    Ok(())
}

fn is_atext(b: u8, smtputf8: bool) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || (smtputf8 && b >= 0x80)
}

fn is_letdig(b: u8, smtputf8: bool) -> bool {
    b.is_ascii_alphanumeric() || (smtputf8 && b >= 0x80)
}

/// Path = "<" [ A-d-l ":" ] Mailbox ">"; `p` is at the "<". Returns the path
/// and the offset just after the ">".
fn parse_path(s: &[u8], start: usize, role: Role, smtputf8: bool) -> Result<(Path, usize)> {
    let n = s.len();
    if !smtputf8 {
        // Only bytes that may belong to the path can trigger this: the path ends
        // at its ">", and parameters check their own bytes.
        let scan_end = path_extent(s, start);
        if let Some(i) = s[start..scan_end].iter().position(|&b| b >= 0x80) {
            return Err(Error::smtp(
                553,
                "5.6.7",
                start + i,
                format!("Non-ASCII {} address requires SMTPUTF8", role.name()),
            ));
        }
    }
    let mut p = start + 1;
    if p < n && s[p] == b'>' {
        if role.mail {
            return Ok((
                Path {
                    local_part: String::new(),
                    domain: String::new(),
                },
                p + 1,
            ));
        }
        return Err(role.bad(p, "empty recipient"));
    }
    if !role.mail
        && n >= p + 11
        && s[p..p + 10].eq_ignore_ascii_case(b"postmaster")
        && s[p + 10] == b'>'
    {
        return Ok((
            Path {
                local_part: String::from_utf8_lossy(&s[p..p + 10]).into_owned(),
                domain: String::new(),
            },
            p + 11,
        ));
    }
    // A-d-l = At-domain *( "," At-domain ): accepted and dropped (RFC 5321 4.1.2).
    if p < n && s[p] == b'@' {
        loop {
            p = parse_domain(s, p + 1, role, smtputf8)?;
            if p < n && s[p] == b',' {
                p += 1;
                if p >= n || s[p] != b'@' {
                    return Err(role.bad(p, "bad source route"));
                }
            } else if p < n && s[p] == b':' {
                p += 1;
                break;
            } else {
                return Err(role.bad(p, "bad source route"));
            }
        }
    }
    let lstart = p;
    p = if p < n && s[p] == b'"' {
        parse_quoted(s, p, role, smtputf8)?
    } else {
        parse_dot_string(s, p, role, smtputf8)?
    };
    let lend = p;
    if p >= n || s[p] != b'@' {
        return Err(role.bad(p, "expected @domain after the local part"));
    }
    let dstart = p + 1;
    p = if dstart < n && s[dstart] == b'[' {
        parse_address_literal(s, dstart, role)?
    } else {
        parse_domain(s, dstart, role, smtputf8)?
    };
    let dend = p;
    if p >= n || s[p] != b'>' {
        return Err(role.bad(p, "expected > at the end of the address"));
    }
    let end = p + 1;
    if end - start > MAX_PATH {
        return Err(Error::smtp(501, role.status(), start, "Path too long"));
    }
    if lend - lstart > MAX_LOCAL_PART {
        return Err(Error::smtp(
            501,
            role.status(),
            lstart,
            "Local part too long",
        ));
    }
    if dend - dstart > MAX_DOMAIN {
        return Err(Error::smtp(501, role.status(), dstart, "Domain too long"));
    }
    Ok((
        Path {
            local_part: String::from_utf8_lossy(&s[lstart..lend]).into_owned(),
            domain: String::from_utf8_lossy(&s[dstart..dend]).into_owned(),
        },
        end,
    ))
}

/// Where a path that starts at `start` can end at the latest: after the first
/// ">" outside a quoted string, or the end of the line.
fn path_extent(s: &[u8], start: usize) -> usize {
    let mut quoted = false;
    let mut i = start;
    while i < s.len() {
        match s[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return i + 1,
            _ => {}
        }
        i += 1;
    }
    s.len()
}

// Dot-string = Atom *("." Atom); Atom = 1*atext
fn parse_dot_string(s: &[u8], mut p: usize, role: Role, smtputf8: bool) -> Result<usize> {
    loop {
        let a = p;
        while p < s.len() && is_atext(s[p], smtputf8) {
            p += 1;
        }
        if p == a {
            return Err(role.bad(p, "invalid character in the local part"));
        }
        if p < s.len() && s[p] == b'.' {
            p += 1;
        } else {
            return Ok(p);
        }
    }
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE
// qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = %d92 %d32-126
fn parse_quoted(s: &[u8], mut p: usize, role: Role, smtputf8: bool) -> Result<usize> {
    p += 1;
    while p < s.len() {
        match s[p] {
            b'"' => return Ok(p + 1),
            b'\\' => {
                if p + 1 < s.len() && (32..=126).contains(&s[p + 1]) {
                    p += 2;
                } else {
                    return Err(role.bad(p, "invalid quoted pair in the local part"));
                }
            }
            b if (32..=126).contains(&b) || (smtputf8 && b >= 0x80) => p += 1,
            _ => return Err(role.bad(p, "invalid character in the quoted local part")),
        }
    }
    Err(role.bad(p, "unterminated quoted local part"))
}

// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
fn parse_domain(s: &[u8], mut p: usize, role: Role, smtputf8: bool) -> Result<usize> {
    loop {
        let a = p;
        if p >= s.len() || !is_letdig(s[p], smtputf8) {
            return Err(role.bad(p, "invalid domain"));
        }
        while p < s.len() && (is_letdig(s[p], smtputf8) || s[p] == b'-') {
            p += 1;
        }
        if s[p - 1] == b'-' {
            return Err(role.bad(p - 1, "domain label ends with a hyphen"));
        }
        if p - a > 63 {
            return Err(role.bad(a, "domain label longer than 63 octets"));
        }
        if p < s.len() && s[p] == b'.' {
            p += 1;
        } else {
            return Ok(p);
        }
    }
}

// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]"
fn parse_address_literal(s: &[u8], p: usize, role: Role) -> Result<usize> {
    let close = match s[p..].iter().position(|&b| b == b']') {
        Some(i) => p + i,
        None => return Err(role.bad(p, "unterminated address literal")),
    };
    let body = &s[p + 1..close];
    let ok = if body.len() >= 5 && body[..5].eq_ignore_ascii_case(b"IPv6:") {
        ip::parse_ipv6(&body[5..]).is_some()
    } else if body.contains(&b':') {
        return Err(role.bad(p, "unsupported address literal"));
    } else {
        parse_snum_ipv4(body)
    };
    if !ok {
        return Err(role.bad(p, "invalid address literal"));
    }
    Ok(close + 1)
}

/// IPv4-address-literal = Snum 3("." Snum); Snum = 1*3DIGIT, 0-255.
fn parse_snum_ipv4(s: &[u8]) -> bool {
    let parts: Vec<&[u8]> = s.split(|&b| b == b'.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.iter().all(u8::is_ascii_digit)
                && p.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')) <= 255
        })
}

// Mail-parameters = esmtp-param *(SP esmtp-param)
// esmtp-param = esmtp-keyword ["=" esmtp-value]
// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
// esmtp-value = 1*(%d33-60 / %d62-126)   ; plus UTF8-non-ascii with SMTPUTF8
fn parse_params(s: &[u8], mut p: usize, smtputf8: bool) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    loop {
        while p < s.len() && s[p] == b' ' {
            p += 1;
        }
        if p >= s.len() {
            return Ok(out);
        }
        let k = p;
        if !s[p].is_ascii_alphanumeric() {
            return Err(syntax(p, "Syntax error in parameters"));
        }
        while p < s.len() && (s[p].is_ascii_alphanumeric() || s[p] == b'-') {
            p += 1;
        }
        let keyword = String::from_utf8_lossy(&s[k..p]).to_ascii_uppercase();
        let mut value = None;
        if p < s.len() && s[p] == b'=' {
            p += 1;
            let v = p;
            while p < s.len() && s[p] != b' ' {
                let b = s[p];
                let ok = (33..=126).contains(&b) && b != b'=' || (smtputf8 && b >= 0x80);
                if !ok {
                    return Err(syntax(p, format!("Syntax error in parameter {keyword}")));
                }
                p += 1;
            }
            if p == v {
                return Err(syntax(p, format!("Syntax error in parameter {keyword}")));
            }
            value = Some(String::from_utf8_lossy(&s[v..p]).into_owned());
        }
        if p < s.len() && s[p] != b' ' {
            return Err(syntax(p, "Syntax error in parameters"));
        }
        out.push((keyword, value));
    }
}

/// Parse one reply line: Reply-code [ ( SP / "-" ) textstring ] CRLF
/// (RFC 5321 4.2), with an RFC 3463 enhanced status code split off the text.
pub fn parse_reply(line: &[u8]) -> Result<Reply> {
    let line = strip_eol(line);
    let bad = |off: usize, why: &'static str| Error::new(crate::error::ErrorKind::Reply, off, why);
    if line.len() < 3 {
        return Err(bad(line.len(), "reply shorter than its three-digit code"));
    }
    let ranges = [(b'2', b'5'), (b'0', b'5'), (b'0', b'9')];
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        if !(lo..=hi).contains(&&line[i]) {
            return Err(bad(i, "invalid reply code"));
        }
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if line.len() == 3 {
        return Ok(Reply {
            code,
            last: true,
            status: None,
            text: String::new(),
        });
    }
    let last = match line[3] {
        b' ' => true,
        b'-' => false,
        _ => return Err(bad(3, "expected a space or hyphen after the reply code")),
    };
    let text = &line[4..];
    if let Some(i) = text
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(bad(4 + i, "control character in reply text"));
    }
    let (status, rest) = match enhanced_status(text, line[0]) {
        Some(n) => {
            let rest = if text.len() > n {
                &text[n + 1..]
            } else {
                &text[n..]
            };
            (Some(String::from_utf8_lossy(&text[..n]).into_owned()), rest)
        }
        None => (None, text),
    };
    Ok(Reply {
        code,
        last,
        status,
        text: String::from_utf8_lossy(rest).into_owned(),
    })
}

/// Length of a leading "class.subject.detail" (RFC 3463: class 2, 4 or 5,
/// equal to the reply's first digit; subject and detail of 1-3 digits) that is
/// followed by a space or the end of the text.
fn enhanced_status(text: &[u8], class: u8) -> Option<usize> {
    if !matches!(class, b'2' | b'4' | b'5') || text.len() < 5 || text[0] != class || text[1] != b'.'
    {
        return None;
    }
    let mut p = 2;
    for part in 0..2 {
        let a = p;
        while p < text.len() && text[p].is_ascii_digit() && p - a < 4 {
            p += 1;
        }
        if p == a || p - a > 3 {
            return None;
        }
        if part == 0 {
            if p >= text.len() || text[p] != b'.' {
                return None;
            }
            p += 1;
        }
    }
    if p == text.len() || text[p] == b' ' {
        Some(p)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Result<Command> {
        parse_command(line.as_bytes(), false, DEFAULT_MAX_LINE)
    }

    #[test]
    fn mail_with_params() {
        let c = cmd("mail FROM:<a.b@example.org> SIZE=100 ret=hdrs envid=QQ+2B\r\n").unwrap();
        assert_eq!(c.verb, "MAIL");
        let p = c.path.unwrap();
        assert_eq!(
            (p.local_part.as_str(), p.domain.as_str()),
            ("a.b", "example.org")
        );
        assert_eq!(c.params[1], ("RET".to_string(), Some("hdrs".to_string())));
    }

    #[test]
    fn errors_carry_replies() {
        let e = cmd("RCPT TO:<a..b@x>").unwrap_err();
        assert_eq!(
            e.kind,
            crate::error::ErrorKind::Smtp {
                code: 553,
                status: "5.1.3"
            }
        );
        let e = cmd("FOO").unwrap_err();
        assert_eq!(
            e.kind,
            crate::error::ErrorKind::Smtp {
                code: 500,
                status: "5.5.1"
            }
        );
    }

    #[test]
    fn reply() {
        let r = parse_reply(b"250-2.1.0 Sender ok\r\n").unwrap();
        assert_eq!(
            (r.code, r.last, r.status.as_deref(), r.text.as_str()),
            (250, false, Some("2.1.0"), "Sender ok")
        );
        let r = parse_reply(b"354 Go ahead").unwrap();
        assert_eq!(r.status, None);
    }
}
