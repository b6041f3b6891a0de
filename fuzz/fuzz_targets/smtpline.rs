#![no_main]
//! SMTP line parsers never panic; every error carries a 4xx/5xx reply.
use libfuzzer_sys::fuzz_target;
use smtpedge_core::error::ErrorKind;
use smtpedge_core::smtpline;

fuzz_target!(|data: &[u8]| {
    for utf8 in [false, true] {
        match smtpline::parse_command(data, utf8, 4096) {
            Ok(c) => {
                if let Some(p) = c.path {
                    assert!(p.local_part.len() <= smtpline::MAX_LOCAL_PART);
                }
            }
            Err(e) => match e.kind {
                ErrorKind::Smtp { code, .. } => assert!((500..=599).contains(&code)),
                other => panic!("unexpected error kind {other:?}"),
            },
        }
    }
    if let Ok(r) = smtpline::parse_reply(data) {
        assert!((200..=559).contains(&r.code));
    }
});
