#![no_main]
//! Name matching never panics, is case-insensitive, and a wildcard pattern
//! never matches a reference with a different number of labels.
use libfuzzer_sys::fuzz_target;
use smtpedge_core::certnames::match_hostname;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, host) = text.split_once('\n').unwrap_or((text, "mx.example.com"));
    let m = match_hostname(pattern, host);
    assert_eq!(m, match_hostname(&pattern.to_ascii_uppercase(), &host.to_ascii_lowercase()));
    if m {
        assert_eq!(
            pattern.trim_end_matches('.').split('.').count(),
            host.trim_end_matches('.').split('.').count()
        );
    }
});
