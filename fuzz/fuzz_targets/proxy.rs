#![no_main]
//! PROXY parser: never panics, never claims bytes it was not given, agrees with
//! itself on any prefix, and what it parses builds back to an equal header.
use libfuzzer_sys::fuzz_target;
use smtpedge_core::error::ErrorKind;
use smtpedge_core::proxy;

fuzz_target!(|data: &[u8]| {
    match proxy::parse(data, 65_551) {
        Ok(h) => {
            assert!(h.consumed <= data.len());
            // The header alone parses to the same thing.
            let again = proxy::parse(&data[..h.consumed], 65_551).expect("header alone");
            assert_eq!(again, h);
            if h.command == proxy::Command::Proxy && h.source.is_some() {
                let (s, d) = (h.source.as_ref().unwrap(), h.destination.as_ref().unwrap());
                let tlvs: Vec<(u8, &[u8])> = h
                    .tlvs
                    .iter()
                    .filter(|t| t.kind != proxy::PP2_TYPE_CRC32C)
                    .map(|t| (t.kind, t.value))
                    .collect();
                let built = proxy::build(i64::from(h.version), h.command, Some((s, d)), h.protocol, &tlvs, h.crc32c)
                    .expect("a parsed header builds");
                let back = proxy::parse(&built, 65_551).expect("a built header parses");
                assert_eq!((back.source, back.destination), (h.source.clone(), h.destination.clone()));
            }
        }
        Err(e) => {
            if let ErrorKind::Incomplete { needed } = e.kind {
                assert!(needed >= 1);
            }
        }
    }
});
