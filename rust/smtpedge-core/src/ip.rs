//! Strict textual IP addresses, shared by the PROXY v1 parser, SMTP address
//! literals and certificate IP matching.
//!
//! IPv4 is the dotted quad with no leading zeros ("01" is refused; "0" is fine).
//! IPv6 follows RFC 4291 section 2.2: one to four hex digits a group, at most one
//! "::" (standing for one or more zero groups), an optional dotted-quad tail, no
//! zone. Output is RFC 5952 text, with IPv4-mapped addresses as ::ffff:a.b.c.d.

/// Parse a strict dotted-quad IPv4 address.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for slot in out.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if part.len() > 1 && part[0] == b'0' {
            return None;
        }
        let v = part.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        if v > 255 {
            return None;
        }
        *slot = v as u8;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

fn hex_group(tok: &[u8]) -> Option<u16> {
    if tok.is_empty() || tok.len() > 4 {
        return None;
    }
    let mut v: u16 = 0;
    for &b in tok {
        let d = (b as char).to_digit(16)? as u16;
        v = (v << 4) | d;
    }
    Some(v)
}

/// Parse an IPv6 address in RFC 4291 text form (no zone, no brackets).
pub fn parse_ipv6(s: &[u8]) -> Option<[u8; 16]> {
    let n = s.len();
    if n < 2 {
        return None;
    }
    let mut words = [0u16; 8];
    let mut count = 0usize;
    let mut gap: Option<usize> = None;
    let mut i = 0usize;
    if s[0] == b':' {
        if s[1] != b':' {
            return None;
        }
        gap = Some(0);
        i = 2;
        if i == n {
            return Some([0; 16]);
        }
    }
    loop {
        let j = s[i..].iter().position(|&b| b == b':').map_or(n, |p| i + p);
        let tok = &s[i..j];
        if tok.contains(&b'.') {
            if j != n || count > 6 {
                return None;
            }
            let v4 = parse_ipv4(tok)?;
            words[count] = u16::from_be_bytes([v4[0], v4[1]]);
            words[count + 1] = u16::from_be_bytes([v4[2], v4[3]]);
            count += 2;
            break;
        }
        if count == 8 {
            return None;
        }
        words[count] = hex_group(tok)?;
        count += 1;
        if j == n {
            break;
        }
        if j + 1 < n && s[j + 1] == b':' {
            if gap.is_some() {
                return None;
            }
            gap = Some(count);
            i = j + 2;
            if i == n {
                break;
            }
        } else {
            i = j + 1;
            if i == n {
                return None;
            }
        }
    }
    let mut full = [0u16; 8];
    match gap {
        Some(g) => {
            if count >= 8 {
                return None;
            }
            full[..g].copy_from_slice(&words[..g]);
            let tail = count - g;
            full[8 - tail..].copy_from_slice(&words[g..count]);
        }
        None => {
            if count != 8 {
                return None;
            }
            full = words;
        }
    }
    let mut out = [0u8; 16];
    for (k, w) in full.iter().enumerate() {
        out[2 * k..2 * k + 2].copy_from_slice(&w.to_be_bytes());
    }
    Some(out)
}

/// Dotted-quad text of an IPv4 address.
pub fn format_ipv4(a: &[u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// RFC 5952 text of an IPv6 address.
pub fn format_ipv6(a: &[u8; 16]) -> String {
    let mut w = [0u16; 8];
    for (k, slot) in w.iter_mut().enumerate() {
        *slot = u16::from_be_bytes([a[2 * k], a[2 * k + 1]]);
    }
    // IPv4-mapped: ::ffff:a.b.c.d (RFC 5952 section 5).
    if w[..5].iter().all(|&x| x == 0) && w[5] == 0xFFFF {
        return format!("::ffff:{}.{}.{}.{}", a[12], a[13], a[14], a[15]);
    }
    // Longest run of two or more zero groups, the first one on a tie.
    let (mut best_start, mut best_len) = (8usize, 0usize);
    let mut k = 0;
    while k < 8 {
        if w[k] == 0 {
            let start = k;
            while k < 8 && w[k] == 0 {
                k += 1;
            }
            if k - start > best_len {
                best_start = start;
                best_len = k - start;
            }
        } else {
            k += 1;
        }
    }
    if best_len < 2 {
        best_start = 8;
        best_len = 0;
    }
    let mut out = String::with_capacity(39);
    let mut k = 0;
    while k < 8 {
        if k == best_start {
            out.push_str("::");
            k += best_len;
            continue;
        }
        if k > 0 && k != best_start + best_len {
            out.push(':');
        }
        push_hex(&mut out, w[k]);
        k += 1;
    }
    out
}

/// Lower-case hex of a group, without leading zeros.
fn push_hex(out: &mut String, v: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut started = false;
    for shift in [12u16, 8, 4, 0] {
        let d = ((v >> shift) & 0xF) as usize;
        if d != 0 || started || shift == 0 {
            out.push(HEX[d] as char);
            started = true;
        }
    }
}

/// Either kind of address, as raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpBytes {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl IpBytes {
    pub fn parse(s: &[u8]) -> Option<IpBytes> {
        if s.contains(&b':') {
            parse_ipv6(s).map(IpBytes::V6)
        } else {
            parse_ipv4(s).map(IpBytes::V4)
        }
    }

    pub fn to_text(&self) -> String {
        match self {
            IpBytes::V4(a) => format_ipv4(a),
            IpBytes::V6(a) => format_ipv6(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(s: &str) -> Option<String> {
        parse_ipv6(s.as_bytes()).map(|a| format_ipv6(&a))
    }

    #[test]
    fn ipv4_table() {
        for (s, ok) in [
            ("1.2.3.4", true),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("256.1.1.1", false),
            ("01.2.3.4", false),
            ("1.2.3", false),
            ("1.2.3.4.5", false),
            ("1..3.4", false),
            ("1.2.3.4 ", false),
            ("", false),
        ] {
            assert_eq!(parse_ipv4(s.as_bytes()).is_some(), ok, "{s}");
        }
    }

    #[test]
    fn ipv6_table() {
        assert_eq!(v6("::").as_deref(), Some("::"));
        assert_eq!(v6("::1").as_deref(), Some("::1"));
        assert_eq!(v6("1::").as_deref(), Some("1::"));
        assert_eq!(v6("2001:DB8::0:1").as_deref(), Some("2001:db8::1"));
        assert_eq!(
            v6("2001:db8:0:0:1:0:0:1").as_deref(),
            Some("2001:db8::1:0:0:1")
        );
        assert_eq!(v6("1:0:2:3:4:5:6:7").as_deref(), Some("1:0:2:3:4:5:6:7"));
        assert_eq!(v6("1::2:3:4:5:6:7").as_deref(), Some("1:0:2:3:4:5:6:7"));
        assert_eq!(v6("::ffff:1.2.3.4").as_deref(), Some("::ffff:1.2.3.4"));
        assert_eq!(v6("::1.2.3.4").as_deref(), Some("::102:304"));
        assert_eq!(
            v6("1:2:3:4:5:6:1.2.3.4").as_deref(),
            Some("1:2:3:4:5:6:102:304")
        );
        for bad in [
            ":",
            ":::",
            "1:::2",
            "1::2::3",
            "::1%eth0",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "12345::",
            "1:",
            ":1",
            "1:2:3:4:5:6:7::8",
            "::1.2.3",
            "1.2.3.4::",
            "g::",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::01.2.3.4",
        ] {
            assert_eq!(v6(bad), None, "{bad}");
        }
        assert_eq!(v6("1:2:3:4:5:6:7::").as_deref(), Some("1:2:3:4:5:6:7:0"));
    }
}
