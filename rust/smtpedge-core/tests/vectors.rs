//! The conformance vectors of tests/vectors/*.json, run against the core
//! (pytest runs the same files through both Python backends).

use serde_json::Value;
use smtpedge_core::error::ErrorKind;
use smtpedge_core::{certnames, data, proxy, smtpline, xtext};

fn load(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/vectors/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("valid JSON")
}

/// Vector strings hold one byte per code point.
fn raw(v: &Value) -> Vec<u8> {
    v.as_str()
        .expect("string")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn endpoint_json(e: &Option<proxy::Endpoint>) -> Value {
    match e {
        None => Value::Null,
        Some(e) => {
            let (a, p) = proxy::endpoint_text(e);
            serde_json::json!([a, p])
        }
    }
}

#[test]
fn proxy_vectors() {
    let v = load("proxy");
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = match case.get("hex") {
            Some(h) => hex(h.as_str().unwrap()),
            None => raw(&case["input"]),
        };
        let max = case
            .get("max_length")
            .and_then(Value::as_u64)
            .map_or(proxy::DEFAULT_MAX_LENGTH, |m| m as usize);
        let got = proxy::parse(&input, max);
        if let Some(want) = case.get("header") {
            let h = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            let tlvs: Vec<Value> = h
                .tlvs
                .iter()
                .map(|t| {
                    let hx: String = t.value.iter().map(|b| format!("{b:02x}")).collect();
                    serde_json::json!([t.kind, hx])
                })
                .collect();
            let fields = serde_json::json!({
                "version": h.version,
                "command": h.command.name(),
                "family": h.family.name(),
                "protocol": h.protocol.name(),
                "source": endpoint_json(&h.source),
                "destination": endpoint_json(&h.destination),
                "tlvs": tlvs,
                "crc32c": h.crc32c,
                "consumed": h.consumed,
            });
            assert_eq!(&fields, want, "{name}");
        } else if let Some(n) = case.get("incomplete") {
            let e = got.expect_err(name);
            assert_eq!(
                e.kind,
                ErrorKind::Incomplete {
                    needed: n.as_u64().unwrap() as usize
                },
                "{name}"
            );
        } else {
            let e = got.expect_err(name);
            assert_eq!(e.kind, ErrorKind::Proxy, "{name}");
            assert_eq!(e.reason, case["error"].as_str().unwrap(), "{name}");
            assert_eq!(e.offset as u64, case["offset"].as_u64().unwrap(), "{name}");
        }
    }
}

#[test]
fn smtpline_vectors() {
    let v = load("smtpline");
    for case in v["commands"].as_array().unwrap() {
        let line = raw(&case["line"]);
        let utf8 = case
            .get("smtputf8")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let got = smtpline::parse_command(&line, utf8, smtpline::DEFAULT_MAX_LINE);
        let label = case["line"].as_str().unwrap();
        if let Some(want) = case.get("command") {
            let c = got.unwrap_or_else(|e| panic!("{label}: {e}"));
            let fields = serde_json::json!({
                "verb": c.verb,
                "argument": c.argument,
                "path": c.path.map(|p| vec![p.local_part, p.domain]),
                "params": c.params.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "chunk_size": c.chunk_size,
                "last": c.last,
            });
            assert_eq!(&fields, want, "{label}");
        } else {
            let e = got.expect_err(label);
            let want = &case["error"];
            let ErrorKind::Smtp { code, status } = e.kind else {
                panic!("{label}: {e:?}")
            };
            assert_eq!(
                serde_json::json!([code, status, e.offset]),
                *want,
                "{label}"
            );
            assert_eq!(e.reason, case["text"].as_str().unwrap(), "{label}");
        }
    }
    for case in v["replies"].as_array().unwrap() {
        let got = smtpline::parse_reply(&raw(&case["line"]));
        let label = case["line"].as_str().unwrap();
        if let Some(want) = case.get("reply") {
            let r = got.unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                serde_json::json!([r.code, r.last, r.status, r.text]),
                *want,
                "{label}"
            );
        } else {
            let e = got.expect_err(label);
            assert_eq!(e.kind, ErrorKind::Reply);
            assert_eq!(e.offset as u64, case["error"].as_u64().unwrap(), "{label}");
            assert_eq!(e.reason, case["text"].as_str().unwrap(), "{label}");
        }
    }
}

#[test]
fn data_vectors() {
    let v = load("data");
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let policy = match case.get("policy").and_then(Value::as_str) {
            Some("normalize") => data::BareNewline::Normalize,
            _ => data::BareNewline::Reject,
        };
        let mut s = data::Scanner::new(case.get("max_size").and_then(Value::as_u64), policy);
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for chunk in case["chunks"].as_array().unwrap() {
            let c = raw(chunk);
            let used = s.feed(&c, &mut out).unwrap();
            if s.done() {
                rest = c[used..].to_vec();
                break;
            }
        }
        assert_eq!(out, raw(&case["content"]), "{name}");
        assert_eq!(s.done(), case["done"].as_bool().unwrap(), "{name}");
        if s.done() {
            assert_eq!(rest, raw(&case["remainder"]), "{name}");
        }
        let err = s.failure.map(|(f, at)| {
            let (code, status, _) = f.reply();
            serde_json::json!([code, status, at])
        });
        assert_eq!(err.unwrap_or(Value::Null), case["error"], "{name}");
    }
}

#[test]
fn xtext_vectors() {
    let v = load("xtext");
    for case in v["xtext"].as_array().unwrap() {
        let decoded = raw(&case["decoded"]);
        let encoded = case["encoded"].as_str().unwrap();
        assert_eq!(xtext::encode(&decoded), encoded);
        assert_eq!(xtext::decode(encoded).unwrap(), decoded);
    }
    for case in v["xtext_errors"].as_array().unwrap() {
        let e = xtext::decode(case["encoded"].as_str().unwrap()).unwrap_err();
        assert_eq!(e.reason, case["text"].as_str().unwrap());
        assert_eq!(e.offset as u64, case["offset"].as_u64().unwrap());
    }
    for case in v["utf8_addr"].as_array().unwrap() {
        let addr = case["address"].as_str().unwrap();
        assert_eq!(
            xtext::encode_utf8_addr(addr, false),
            case["xtext"].as_str().unwrap()
        );
        assert_eq!(
            xtext::encode_utf8_addr(addr, true),
            case["unitext"].as_str().unwrap()
        );
        assert_eq!(
            xtext::decode_utf8_addr(case["xtext"].as_str().unwrap()).unwrap(),
            addr
        );
        assert_eq!(
            xtext::decode_utf8_addr(case["unitext"].as_str().unwrap()).unwrap(),
            addr
        );
    }
    for case in v["utf8_addr_errors"].as_array().unwrap() {
        let e = xtext::decode_utf8_addr(case["encoded"].as_str().unwrap()).unwrap_err();
        assert_eq!(e.reason, case["text"].as_str().unwrap());
        assert_eq!(e.offset as u64, case["offset"].as_u64().unwrap());
    }
}

#[test]
fn certname_vectors() {
    let v = load("certnames");
    for case in v["match"].as_array().unwrap() {
        let (p, h) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
        // The core sees A-labels only; U-label cases are covered through the
        // Python layer, which converts them first.
        if !p.is_ascii() || !h.is_ascii() {
            continue;
        }
        assert_eq!(
            certnames::match_hostname(p, h),
            case[2].as_bool().unwrap(),
            "{p} vs {h}"
        );
    }
    for case in v["verify"].as_array().unwrap() {
        let strs = |k: &str| -> Vec<String> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let (dns, cns) = (strs("dns"), strs("cn"));
        let ips: Vec<_> = strs("ip")
            .iter()
            .filter_map(|s| smtpedge_core::ip::IpBytes::parse(s.as_bytes()))
            .collect();
        let d: Vec<&str> = dns.iter().map(String::as_str).collect();
        let c: Vec<&str> = cns.iter().map(String::as_str).collect();
        let reference = case["reference"].as_str().unwrap();
        assert_eq!(
            certnames::verify_names(&d, &c, &ips, reference),
            case["ok"].as_bool().unwrap(),
            "{reference}"
        );
    }
}
