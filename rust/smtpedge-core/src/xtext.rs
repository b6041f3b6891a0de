//! xtext (RFC 3461 section 4) and the utf-8-addr forms of RFC 6533 section 3.
//!
//! xtext = *( xchar / hexchar )
//! xchar = any ASCII CHAR between "!" (33) and "~" (126) inclusive, except "+" and "="
//! hexchar = "+" 2(%x30-39 / %x41-46)   ; upper-case hex only
//!
//! utf-8-addr-xtext   = 1*(QCHAR / EmbeddedUnicodeChar)
//! utf-8-addr-unitext = 1*(QUCHAR / EmbeddedUnicodeChar)
//! QCHAR  = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e   ; printable ASCII but "+", "=", "\"
//! QUCHAR = QCHAR / UTF8-2 / UTF8-3 / UTF8-4
//! EmbeddedUnicodeChar = "\x{" HEXPOINT "}"         ; upper-case hex, shortest form

use crate::error::{Error, ErrorKind, Result};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn xerr(offset: usize, reason: &'static str) -> Error {
    Error::new(ErrorKind::Xtext, offset, reason)
}

fn is_xchar(b: u8) -> bool {
    (33..=126).contains(&b) && b != b'+' && b != b'='
}

/// Encode bytes as xtext.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() + data.len() / 4);
    for &b in data {
        if is_xchar(b) {
            out.push(b as char);
        } else {
            out.push('+');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0x0F) as usize] as char);
        }
    }
    out
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode strict xtext.
pub fn decode(text: &str) -> Result<Vec<u8>> {
    let s = text.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'+' {
            if i + 2 >= s.len() {
                return Err(xerr(i, "truncated +XX escape"));
            }
            let hi = upper_hex(s[i + 1]);
            let lo = upper_hex(s[i + 2]);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push((h << 4) | l),
                _ => return Err(xerr(i, "escape is not + and two upper-case hex digits")),
            }
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(xerr(i, "character not allowed in xtext"));
        }
    }
    Ok(out)
}

fn is_qchar(c: char) -> bool {
    matches!(c, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e')
}

/// Encode an address as utf-8-addr-xtext (`unitext == false`: every non-ASCII
/// character escaped, safe without SMTPUTF8) or utf-8-addr-unitext.
pub fn encode_utf8_addr(address: &str, unitext: bool) -> String {
    let mut out = String::with_capacity(address.len() + 8);
    for c in address.chars() {
        if is_qchar(c) || (unitext && !c.is_ascii()) {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:02X}}}", c as u32));
        }
    }
    out
}

/// Code points that may appear as an EmbeddedUnicodeChar: the ASCII ones that
/// QCHAR leaves out, and every non-ASCII scalar value.
fn escapable(v: u32) -> bool {
    matches!(v, 0x01..=0x20 | 0x2B | 0x3D | 0x5C | 0x7F)
        || (v >= 0x80 && char::from_u32(v).is_some())
}

/// Decode utf-8-addr-xtext or utf-8-addr-unitext back to the address.
pub fn decode_utf8_addr(text: &str) -> Result<String> {
    if text.is_empty() {
        return Err(xerr(0, "empty utf-8-addr-xtext"));
    }
    let s = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'\\' {
            if s.len() < i + 3 || s[i + 1] != b'x' || s[i + 2] != b'{' {
                return Err(xerr(i, "backslash not followed by x{"));
            }
            let start = i + 3;
            let mut j = start;
            while j < s.len() && j - start < 7 && upper_hex(s[j]).is_some() {
                j += 1;
            }
            if j >= s.len() || s[j] != b'}' {
                return Err(xerr(
                    i,
                    "\\x{...} escape is not 2 to 6 upper-case hex digits and }",
                ));
            }
            let digits = &s[start..j];
            if digits.len() < 2 || digits.len() > 6 || (digits.len() > 2 && digits[0] == b'0') {
                return Err(xerr(i, "\\x{...} escape is not in shortest form"));
            }
            let v = digits.iter().fold(0u32, |a, &d| {
                (a << 4) | u32::from(upper_hex(d).unwrap_or(0))
            });
            if !escapable(v) {
                return Err(xerr(
                    i,
                    "\\x{...} escape of a character that needs none or is invalid",
                ));
            }
            out.push(char::from_u32(v).expect("checked by escapable"));
            i = j + 1;
        } else if b < 0x80 {
            if !is_qchar(b as char) {
                return Err(xerr(i, "character not allowed in utf-8-addr-xtext"));
            }
            out.push(b as char);
            i += 1;
        } else {
            let c = text[i..].chars().next().expect("inside the string");
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_table() {
        assert_eq!(encode(b"a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(decode("a+2Bb+3Dc+20d").unwrap(), b"a+b=c d");
        for bad in ["+2b", "+2", "+", "a b", "a=b", "+G0", "\u{e9}"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utf8_addr() {
        let a = "J\u{f8}rgen+x@b\u{fc}cher.example";
        let x = encode_utf8_addr(a, false);
        assert_eq!(x, "J\\x{F8}rgen\\x{2B}x@b\\x{FC}cher.example");
        assert_eq!(decode_utf8_addr(&x).unwrap(), a);
        let u = encode_utf8_addr(a, true);
        assert_eq!(u, "J\u{f8}rgen\\x{2B}x@b\u{fc}cher.example");
        assert_eq!(decode_utf8_addr(&u).unwrap(), a);
        for bad in [
            "\\x{f8}",
            "\\x{0F8}",
            "\\x{41}",
            "\\x{D800}",
            "\\x{110000}",
            "a+b",
            "\\x{F8",
            "\\y",
        ] {
            assert!(decode_utf8_addr(bad).is_err(), "{bad}");
        }
    }
}
