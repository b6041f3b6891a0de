//! Certificate name checking (RFC 6125 section 6.4, with Exim's wildcard rule).
//!
//! Names reach this module as ASCII (A-labels): the Python layer converts
//! U-labels with IDNA 2008 before calling in, so both backends share one IDNA
//! implementation.

use crate::ip::IpBytes;

/// The name with one trailing dot removed, or `None` when it cannot match
/// anything (empty, an empty label, control, space or non-ASCII characters).
fn clean(name: &str) -> Option<&str> {
    if name.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return None;
    }
    Some(name)
}

/// Whether the presented identifier `pattern` (a SAN dNSName or CN) matches the
/// reference `hostname`.
///
/// A `*` is honoured only as the whole left-most label of a pattern of three
/// or more labels (so never `*.com`, `f*.example.com` or `a.*.example.com`),
/// matches exactly one label, and never matches an A-label (`xn--`). An IP
/// address as hostname never matches a name (RFC 6125 section 6.2.1 keeps IP
/// references to IP SANs).
pub fn match_hostname(pattern: &str, hostname: &str) -> bool {
    let (Some(p), Some(h)) = (clean(pattern), clean(hostname)) else {
        return false;
    };
    if h.contains('*') || is_ip_text(hostname) {
        return false;
    }
    match p.strip_prefix("*.") {
        Some(rest) => {
            // Wildcard: rest must hold at least two labels and no other `*`,
            // and match everything after the reference's first label.
            let Some((first, h_rest)) = h.split_once('.') else {
                return false;
            };
            rest.contains('.')
                && !rest.contains('*')
                && !first.as_bytes()[..first.len().min(4)].eq_ignore_ascii_case(b"xn--")
                && rest.eq_ignore_ascii_case(h_rest)
        }
        None => !p.contains('*') && p.eq_ignore_ascii_case(h),
    }
}

fn is_ip_text(s: &str) -> bool {
    let s = s
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(s);
    IpBytes::parse(s.as_bytes()).is_some()
}

/// Parse a reference identifier that is an IP address (IPv6 may be bracketed).
pub fn reference_ip(reference: &str) -> Option<IpBytes> {
    let s = reference
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(reference);
    IpBytes::parse(s.as_bytes())
}

/// Whether a certificate with these identifiers is valid for `reference`:
/// an IP reference against the IP SANs only; a name against the SAN dNSNames,
/// or against the subject common names only when there is no SAN dNSName
/// (RFC 6125 section 6.4.4).
pub fn verify_names(
    dns_names: &[&str],
    common_names: &[&str],
    ip_addresses: &[IpBytes],
    reference: &str,
) -> bool {
    if let Some(ip) = reference_ip(reference) {
        return ip_addresses.contains(&ip);
    }
    let names = if dns_names.is_empty() {
        common_names
    } else {
        dns_names
    };
    names.iter().any(|p| match_hostname(p, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("example.com", "EXAMPLE.com.", true),
            ("*.example.com", "mx.example.com", true),
            ("*.example.com", "a.mx.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.com", "example.com", false),
            ("f*.example.com", "foo.example.com", false),
            ("*.example.com", "xn--bcher-kva.example.com", false),
            ("mx.*.com", "mx.example.com", false),
            ("a..b", "a..b", false),
            ("", "", false),
            ("*.example.com", "*.example.com", false),
        ];
        for (p, h, want) in cases {
            assert_eq!(match_hostname(p, h), want, "{p} vs {h}");
        }
    }

    #[test]
    fn cn_only_without_san() {
        assert!(verify_names(
            &[],
            &["mx.example.com"],
            &[],
            "mx.example.com"
        ));
        assert!(!verify_names(
            &["other.example.com"],
            &["mx.example.com"],
            &[],
            "mx.example.com"
        ));
        let ip = IpBytes::parse(b"192.0.2.1").unwrap();
        assert!(verify_names(&[], &[], &[ip], "192.0.2.1"));
        assert!(!verify_names(&["192.0.2.1"], &[], &[], "192.0.2.1"));
    }
}
