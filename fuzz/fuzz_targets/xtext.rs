#![no_main]
//! xtext and utf-8-addr-xtext: decoders never panic, encoders round-trip.
use libfuzzer_sys::fuzz_target;
use smtpedge_core::xtext;

fuzz_target!(|data: &[u8]| {
    assert_eq!(xtext::decode(&xtext::encode(data)).unwrap(), data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(raw) = xtext::decode(text) {
            // "+41" and "A" both decode to b"A"; the encoder picks the short form.
            assert_eq!(xtext::decode(&xtext::encode(&raw)).unwrap(), raw);
        }
        let _ = xtext::decode_utf8_addr(text);
        if !text.is_empty() && !text.contains('\0') {
            for unitext in [false, true] {
                let enc = xtext::encode_utf8_addr(text, unitext);
                assert_eq!(xtext::decode_utf8_addr(&enc).unwrap(), text);
            }
        }
    }
});
