#![no_main]
//! DATA scanner: the same result whatever the chunking; the end of data is
//! only ever a real CRLF "." CRLF; dot_stuff output scans back to its input.
use libfuzzer_sys::fuzz_target;
use smtpedge_core::data::{dot_stuff, BareNewline, Scanner};

fn scan(chunks: &[&[u8]], policy: BareNewline) -> (Vec<u8>, bool, u64, Option<(smtpedge_core::data::Failure, u64)>) {
    let mut s = Scanner::new(Some(1 << 16), policy);
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, &mut out).unwrap();
        if s.done() {
            break;
        }
    }
    (out, s.done(), s.consumed, s.failure)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = usize::from(data[0]) % data.len();
    let body = &data[1..];
    let cut = cut.min(body.len());
    for policy in [BareNewline::Reject, BareNewline::Normalize] {
        let whole = scan(&[body], policy);
        let split = scan(&[&body[..cut], &body[cut..]], policy);
        assert_eq!(whole.1, split.1);
        assert_eq!(whole.2, split.2);
        assert_eq!(whole.3, split.3);
        if whole.3.is_none() {
            assert_eq!(whole.0, split.0);
        }
        if whole.1 {
            let end = whole.2 as usize;
            assert!(end >= 3 && &body[end - 3..end] == b".\r\n");
            assert!(end == 3 || &body[end - 5..end - 3] == b"\r\n");
        }
    }
    let wire = dot_stuff(body);
    let mut s = Scanner::new(None, BareNewline::Normalize);
    let mut out = Vec::new();
    assert_eq!(s.feed(&wire, &mut out).unwrap(), wire.len());
    assert!(s.done());
    assert_eq!(dot_stuff(&out), wire);
});
