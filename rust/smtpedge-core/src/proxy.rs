//! PROXY protocol header parser and builder (HAProxy's proxy-protocol.txt,
//! versions 1 and 2).
//!
//! `parse` reads one header at the start of the input and never looks past its
//! end: `Header::consumed` says how long it was, the rest belongs to SMTP. A
//! valid but unfinished prefix gives `ErrorKind::Incomplete` with the least
//! number of bytes still needed.

use crate::crc32c;
use crate::error::{Error, Result};
use crate::ip::{self, IpBytes};

/// The twelve-byte signature that opens every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most 107 bytes, CRLF included (spec section 2.1).
pub const V1_MAX_LENGTH: usize = 107;
/// The shortest complete header: "PROXY UNKNOWN\r\n".
pub const MIN_LENGTH: usize = 15;
/// Default cap on the total length of a version 2 header.
pub const DEFAULT_MAX_LENGTH: usize = 4096;

pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_CRC32C: u8 = 0x03;
pub const PP2_TYPE_NOOP: u8 = 0x04;
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
pub const PP2_SUBTYPE_SSL_SIG_ALG: u8 = 0x24;
pub const PP2_SUBTYPE_SSL_KEY_ALG: u8 = 0x25;
pub const PP2_SUBTYPE_SSL_GROUP: u8 = 0x26;
pub const PP2_SUBTYPE_SSL_SIG_SCHEME: u8 = 0x27;
pub const PP2_SUBTYPE_SSL_CLIENT_CERT: u8 = 0x28;
pub const PP2_TYPE_NETNS: u8 = 0x30;
/// PP2_TYPE_UNIQUE_ID values are at most 128 bytes (spec section 2.2.5).
pub const UNIQUE_ID_MAX: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Local,
    Proxy,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Local => "LOCAL",
            Command::Proxy => "PROXY",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Unspec => "UNSPEC",
            Family::Inet => "INET",
            Family::Inet6 => "INET6",
            Family::Unix => "UNIX",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Unspec,
    Stream,
    Dgram,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Unspec => "UNSPEC",
            Protocol::Stream => "STREAM",
            Protocol::Dgram => "DGRAM",
        }
    }

    pub fn from_name(s: &str) -> Option<Protocol> {
        match s {
            "UNSPEC" => Some(Protocol::Unspec),
            "STREAM" => Some(Protocol::Stream),
            "DGRAM" => Some(Protocol::Dgram),
            _ => None,
        }
    }
}

/// One end of the proxied connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ip(IpBytes, u16),
    Unix(String),
}

/// A type-length-value field of a version 2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub version: u8,
    pub command: Command,
    pub family: Family,
    pub protocol: Protocol,
    /// `None` for LOCAL, UNSPEC and v1 UNKNOWN: use the real socket endpoints.
    pub source: Option<Endpoint>,
    pub destination: Option<Endpoint>,
    pub tlvs: Vec<Tlv<'a>>,
    /// True when a CRC32C TLV was present (and matched; a mismatch is an error).
    pub crc32c: bool,
    /// Length of the header; `data[consumed..]` is not part of it.
    pub consumed: usize,
}

/// The PP2_TYPE_SSL TLV (spec section 2.2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslInfo<'a> {
    pub client: u8,
    pub verify: u32,
    pub tlvs: Vec<Tlv<'a>>,
}

impl<'a> SslInfo<'a> {
    /// The first sub-TLV of this type.
    pub fn get(&self, kind: u8) -> Option<&'a [u8]> {
        self.tlvs.iter().find(|t| t.kind == kind).map(|t| t.value)
    }
}

/// Parse one PROXY header (v1 or v2) at the start of `data`.
/// `max_length` caps the total length of a v2 header.
pub fn parse(data: &[u8], max_length: usize) -> Result<Header<'_>> {
    match data.first() {
        None => Err(Error::incomplete(MIN_LENGTH)),
        Some(b'\r') => parse_v2(data, max_length),
        Some(b'P') => parse_v1(data),
        Some(_) => Err(Error::proxy(0, "not a PROXY protocol header")),
    }
}

// ---------------------------------------------------------------------------
// Version 1: "PROXY" SP ( "TCP4" | "TCP6" ) SP src SP dst SP sport SP dport CRLF
//          | "PROXY" SP "UNKNOWN" [ SP <anything but CR/LF> ] CRLF
// at most 107 bytes with the CRLF, single spaces, decimal ports without leading
// zeros, addresses of the declared family.

fn parse_v1(data: &[u8]) -> Result<Header<'_>> {
    let window = &data[..data.len().min(V1_MAX_LENGTH)];
    let end = window.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = match end {
        Some(p) => &data[..p],
        None => window,
    };
    let parsed = parse_v1_line(line, end.is_some())?;
    let p = match end {
        Some(p) => p,
        None => {
            if window.len() == V1_MAX_LENGTH {
                return Err(Error::proxy(
                    V1_MAX_LENGTH,
                    "v1 header longer than 107 bytes",
                ));
            }
            return Err(Error::incomplete(
                MIN_LENGTH.saturating_sub(data.len()).max(1),
            ));
        }
    };
    if data[p] == b'\n' {
        return Err(Error::proxy(p, "v1 header ends in a bare LF"));
    }
    if p + 2 > V1_MAX_LENGTH {
        return Err(Error::proxy(
            V1_MAX_LENGTH,
            "v1 header longer than 107 bytes",
        ));
    }
    if p + 1 == data.len() {
        return Err(Error::incomplete(1));
    }
    if data[p + 1] != b'\n' {
        return Err(Error::proxy(p + 1, "v1 header has a CR not followed by LF"));
    }
    let (family, endpoints) = parsed.expect("a complete line parses to a header");
    let (source, destination) = match endpoints {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    Ok(Header {
        version: 1,
        command: Command::Proxy,
        family,
        protocol: if family == Family::Unspec {
            Protocol::Unspec
        } else {
            Protocol::Stream
        },
        source,
        destination,
        tlvs: Vec::new(),
        crc32c: false,
        consumed: p + 2,
    })
}

type V1Parsed = Option<(Family, Option<(Endpoint, Endpoint)>)>;

/// Check a v1 line (without its CRLF). When `complete` is false the line may
/// still grow: its last field is not judged yet, and `Ok(None)` means "valid so
/// far".
fn parse_v1_line(line: &[u8], complete: bool) -> Result<V1Parsed> {
    const PREFIX: &[u8] = b"PROXY ";
    let k = line.len().min(PREFIX.len());
    if let Some(i) = (0..k).find(|&i| line[i] != PREFIX[i]) {
        return Err(Error::proxy(i, "not a PROXY protocol header"));
    }
    if let Some(i) = line.iter().position(|&b| !(0x20..=0x7e).contains(&b)) {
        return Err(Error::proxy(i, "non-printable byte in the v1 header"));
    }
    if line.len() < PREFIX.len() {
        if complete {
            return Err(Error::proxy(
                line.len(),
                "v1 header ends before its protocol",
            ));
        }
        return Ok(None);
    }
    let mut fields: Vec<(usize, &[u8])> = Vec::with_capacity(6);
    let mut start = PREFIX.len();
    for (i, &b) in line.iter().enumerate().skip(PREFIX.len()) {
        if b == b' ' {
            fields.push((start, &line[start..i]));
            start = i + 1;
        }
    }
    fields.push((start, &line[start..]));
    let judged = if complete {
        fields.len()
    } else {
        fields.len() - 1
    };
    let family = match fields[0].1 {
        _ if judged == 0 => return Ok(None),
        b"TCP4" => Family::Inet,
        b"TCP6" => Family::Inet6,
        b"UNKNOWN" => {
            // Anything may follow UNKNOWN up to the CRLF (spec section 2.1).
            return Ok(if complete {
                Some((Family::Unspec, None))
            } else {
                None
            });
        }
        _ => return Err(Error::proxy(fields[0].0, "unknown v1 protocol")),
    };
    let mut ips = [IpBytes::V4([0; 4]); 2];
    let mut ports = [0u16; 2];
    for (n, &(off, field)) in fields.iter().enumerate().take(judged.min(5)).skip(1) {
        if field.is_empty() {
            return Err(Error::proxy(
                off,
                "empty field in the v1 header (a double or trailing space)",
            ));
        }
        match n {
            1 | 2 => {
                let parsed = if family == Family::Inet {
                    ip::parse_ipv4(field).map(IpBytes::V4)
                } else {
                    ip::parse_ipv6(field).map(IpBytes::V6)
                };
                ips[n - 1] = parsed.ok_or_else(|| {
                    Error::proxy(
                        off,
                        if family == Family::Inet {
                            "invalid IPv4 address in the v1 header"
                        } else {
                            "invalid IPv6 address in the v1 header"
                        },
                    )
                })?;
            }
            _ => {
                ports[n - 3] = parse_port(field)
                    .ok_or_else(|| Error::proxy(off, "invalid port in the v1 header"))?;
            }
        }
    }
    if fields.len() > 5 {
        let (off, field) = fields[5];
        if field.is_empty() && judged > 5 {
            return Err(Error::proxy(
                off,
                "empty field in the v1 header (a double or trailing space)",
            ));
        }
        return Err(Error::proxy(off - 1, "too many fields in the v1 header"));
    }
    if !complete {
        return Ok(None);
    }
    if fields.len() < 5 {
        return Err(Error::proxy(line.len(), "too few fields in the v1 header"));
    }
    Ok(Some((
        family,
        Some((
            Endpoint::Ip(ips[0], ports[0]),
            Endpoint::Ip(ips[1], ports[1]),
        )),
    )))
}

/// A decimal port, 0-65535, without leading zeros.
fn parse_port(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if s.len() > 1 && s[0] == b'0' {
        return None;
    }
    let v = s.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
    u16::try_from(v).ok()
}

// ---------------------------------------------------------------------------
// Version 2: 12-byte signature, ver_cmd, fam, 16-bit length, address block, TLVs.

fn parse_v2(data: &[u8], max_length: usize) -> Result<Header<'_>> {
    let n = data.len();
    let k = n.min(V2_SIGNATURE.len());
    if let Some(i) = (0..k).find(|&i| data[i] != V2_SIGNATURE[i]) {
        return Err(Error::proxy(i, "invalid v2 signature"));
    }
    if n < 13 {
        return Err(Error::incomplete(16 - n));
    }
    let version = data[12] >> 4;
    if version != 2 {
        return Err(Error::proxy(
            12,
            format!("unsupported v2 version {version}"),
        ));
    }
    let command = match data[12] & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(Error::proxy(12, format!("unknown v2 command {c}"))),
    };
    if n < 14 {
        return Err(Error::incomplete(16 - n));
    }
    let family = match data[13] >> 4 {
        0 => Family::Unspec,
        1 => Family::Inet,
        2 => Family::Inet6,
        3 => Family::Unix,
        f => return Err(Error::proxy(13, format!("unknown v2 address family {f}"))),
    };
    let protocol = match data[13] & 0x0F {
        0 => Protocol::Unspec,
        1 => Protocol::Stream,
        2 => Protocol::Dgram,
        p => {
            return Err(Error::proxy(
                13,
                format!("unknown v2 transport protocol {p}"),
            ))
        }
    };
    if n < 16 {
        return Err(Error::incomplete(16 - n));
    }
    let total = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if total > max_length {
        return Err(Error::proxy(
            14,
            format!("v2 header of {total} bytes exceeds the limit of {max_length}"),
        ));
    }
    if n < total {
        return Err(Error::incomplete(total - n));
    }
    let mut header = Header {
        version: 2,
        command,
        family,
        protocol,
        source: None,
        destination: None,
        tlvs: Vec::new(),
        crc32c: false,
        consumed: total,
    };
    // LOCAL and UNSPEC: the receiver discards the protocol block and uses the
    // real connection endpoints (spec section 2.2).
    if command == Command::Local || family == Family::Unspec {
        return Ok(header);
    }
    let addr_len = match family {
        Family::Inet => 12,
        Family::Inet6 => 36,
        _ => 216,
    };
    if total - 16 < addr_len {
        return Err(Error::proxy(
            16,
            format!(
                "v2 {} address block needs {addr_len} bytes, the header has {}",
                family.name(),
                total - 16
            ),
        ));
    }
    let a = &data[16..16 + addr_len];
    let (source, destination) = match family {
        Family::Inet => {
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            (
                Endpoint::Ip(IpBytes::V4(a[0..4].try_into().unwrap()), port(8)),
                Endpoint::Ip(IpBytes::V4(a[4..8].try_into().unwrap()), port(10)),
            )
        }
        Family::Inet6 => {
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            (
                Endpoint::Ip(IpBytes::V6(a[0..16].try_into().unwrap()), port(32)),
                Endpoint::Ip(IpBytes::V6(a[16..32].try_into().unwrap()), port(34)),
            )
        }
        _ => (unix_path(a, 0, 16)?, unix_path(a, 108, 16 + 108)?),
    };
    header.source = Some(source);
    header.destination = Some(destination);
    let mut crc_at: Option<usize> = None;
    header.tlvs = parse_tlvs(data, 16 + addr_len, total, |off, t| {
        check_tlv(data, off, t, &mut crc_at)
    })?;
    if let Some(off) = crc_at {
        let want = u32::from_be_bytes(data[off + 3..off + 7].try_into().unwrap());
        if crc32c::crc32c_with_hole(&data[..total], off + 3) != want {
            return Err(Error::proxy(off, "CRC32C checksum mismatch"));
        }
        header.crc32c = true;
    }
    Ok(header)
}

fn unix_path(block: &[u8], at: usize, offset: usize) -> Result<Endpoint> {
    let raw = &block[at..at + 108];
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    match std::str::from_utf8(&raw[..len]) {
        Ok(s) => Ok(Endpoint::Unix(s.to_owned())),
        Err(_) => Err(Error::proxy(offset, "UNIX socket path is not UTF-8")),
    }
}

/// Split `data[start..end]` into TLVs, calling `check` on each as it is read.
fn parse_tlvs<'a>(
    data: &'a [u8],
    start: usize,
    end: usize,
    mut check: impl FnMut(usize, &Tlv<'a>) -> Result<()>,
) -> Result<Vec<Tlv<'a>>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        if end - pos < 3 {
            return Err(Error::proxy(pos, "truncated TLV"));
        }
        let kind = data[pos];
        let len = usize::from(u16::from_be_bytes([data[pos + 1], data[pos + 2]]));
        if pos + 3 + len > end {
            return Err(Error::proxy(
                pos,
                format!("TLV type 0x{kind:02x} of length {len} overruns its block"),
            ));
        }
        let tlv = Tlv {
            kind,
            value: &data[pos + 3..pos + 3 + len],
        };
        check(pos, &tlv)?;
        out.push(tlv);
        pos += 3 + len;
    }
    Ok(out)
}

fn check_tlv(data: &[u8], off: usize, t: &Tlv<'_>, crc_at: &mut Option<usize>) -> Result<()> {
    match t.kind {
        PP2_TYPE_AUTHORITY if std::str::from_utf8(t.value).is_err() => {
            Err(Error::proxy(off, "AUTHORITY TLV is not UTF-8"))
        }
        PP2_TYPE_CRC32C => {
            if t.value.len() != 4 {
                return Err(Error::proxy(off, "CRC32C TLV is not 4 bytes long"));
            }
            if crc_at.is_some() {
                return Err(Error::proxy(off, "duplicate CRC32C TLV"));
            }
            *crc_at = Some(off);
            Ok(())
        }
        PP2_TYPE_UNIQUE_ID if t.value.len() > UNIQUE_ID_MAX => {
            Err(Error::proxy(off, "UNIQUE_ID TLV longer than 128 bytes"))
        }
        PP2_TYPE_NETNS if !t.value.is_ascii() => {
            Err(Error::proxy(off, "NETNS TLV is not US-ASCII"))
        }
        PP2_TYPE_SSL => {
            if t.value.len() < 5 {
                return Err(Error::proxy(
                    off,
                    "SSL TLV shorter than its 5-byte fixed part",
                ));
            }
            parse_tlvs(data, off + 8, off + 3 + t.value.len(), |soff, s| {
                check_ssl_subtlv(soff, s)
            })
            .map(|_| ())
        }
        _ => Ok(()),
    }
}

fn check_ssl_subtlv(off: usize, s: &Tlv<'_>) -> Result<()> {
    match s.kind {
        PP2_SUBTYPE_SSL_CN if std::str::from_utf8(s.value).is_err() => {
            Err(Error::proxy(off, "SSL CN sub-TLV is not UTF-8"))
        }
        PP2_SUBTYPE_SSL_VERSION
        | PP2_SUBTYPE_SSL_CIPHER
        | PP2_SUBTYPE_SSL_SIG_ALG
        | PP2_SUBTYPE_SSL_KEY_ALG
        | PP2_SUBTYPE_SSL_GROUP
        | PP2_SUBTYPE_SSL_SIG_SCHEME
            if !s.value.is_ascii() =>
        {
            Err(Error::proxy(
                off,
                format!("SSL sub-TLV 0x{:02x} is not US-ASCII", s.kind),
            ))
        }
        _ => Ok(()),
    }
}

/// Decode the value of a PP2_TYPE_SSL TLV (already checked by `parse`).
pub fn parse_ssl(value: &[u8]) -> Result<SslInfo<'_>> {
    if value.len() < 5 {
        return Err(Error::proxy(
            0,
            "SSL TLV shorter than its 5-byte fixed part",
        ));
    }
    let tlvs = parse_tlvs(value, 5, value.len(), check_ssl_subtlv)?;
    Ok(SslInfo {
        client: value[0],
        verify: u32::from_be_bytes(value[1..5].try_into().unwrap()),
        tlvs,
    })
}

// ---------------------------------------------------------------------------
// Building headers, for clients and tests.

/// Resolve a caller's `(address, port)` into an endpoint: an IP address when
/// `port` is given, a UNIX socket path when it is `None`.
pub fn endpoint(address: &str, port: Option<i64>) -> Result<Endpoint> {
    match port {
        None => Ok(Endpoint::Unix(address.to_owned())),
        Some(p) => {
            let ip = IpBytes::parse(address.as_bytes())
                .ok_or_else(|| Error::usage(format!("invalid IP address '{address}'")))?;
            let p = u16::try_from(p)
                .map_err(|_| Error::usage(format!("port {p} is out of range 0-65535")))?;
            Ok(Endpoint::Ip(ip, p))
        }
    }
}

fn family_of(e: &Endpoint) -> Family {
    match e {
        Endpoint::Ip(IpBytes::V4(_), _) => Family::Inet,
        Endpoint::Ip(IpBytes::V6(_), _) => Family::Inet6,
        Endpoint::Unix(_) => Family::Unix,
    }
}

/// Build a version 1 or 2 header. `endpoints` is `(source, destination)`;
/// `None` builds "PROXY UNKNOWN" (v1) or an UNSPEC header (v2). With `crc`, a
/// CRC32C TLV is appended after `tlvs` and filled in.
pub fn build(
    version: i64,
    command: Command,
    endpoints: Option<(&Endpoint, &Endpoint)>,
    protocol: Protocol,
    tlvs: &[(u8, &[u8])],
    crc: bool,
) -> Result<Vec<u8>> {
    let family = match endpoints {
        None => Family::Unspec,
        Some((s, d)) => {
            let f = family_of(s);
            if f != family_of(d) {
                return Err(Error::usage(
                    "source and destination are of different address families",
                ));
            }
            f
        }
    };
    match version {
        1 => build_v1(command, endpoints, family, protocol, tlvs, crc),
        2 => build_v2(command, endpoints, family, protocol, tlvs, crc),
        v => Err(Error::usage(format!("version must be 1 or 2, not {v}"))),
    }
}

fn build_v1(
    command: Command,
    endpoints: Option<(&Endpoint, &Endpoint)>,
    family: Family,
    protocol: Protocol,
    tlvs: &[(u8, &[u8])],
    crc: bool,
) -> Result<Vec<u8>> {
    if command != Command::Proxy {
        return Err(Error::usage("version 1 has no LOCAL command"));
    }
    if !tlvs.is_empty() || crc {
        return Err(Error::usage("version 1 carries no TLVs"));
    }
    let (s, d) = match endpoints {
        None => return Ok(b"PROXY UNKNOWN\r\n".to_vec()),
        Some(e) => e,
    };
    if protocol != Protocol::Stream {
        return Err(Error::usage(
            "version 1 carries only STREAM (TCP) connections",
        ));
    }
    let proto = match family {
        Family::Inet => "TCP4",
        Family::Inet6 => "TCP6",
        _ => return Err(Error::usage("version 1 carries only TCP over IPv4 or IPv6")),
    };
    let (Endpoint::Ip(sip, sport), Endpoint::Ip(dip, dport)) = (s, d) else {
        unreachable!("family checked above")
    };
    Ok(format!(
        "PROXY {proto} {} {} {sport} {dport}\r\n",
        sip.to_text(),
        dip.to_text()
    )
    .into_bytes())
}

fn build_v2(
    command: Command,
    endpoints: Option<(&Endpoint, &Endpoint)>,
    family: Family,
    protocol: Protocol,
    tlvs: &[(u8, &[u8])],
    crc: bool,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(match command {
        Command::Local => 0x20,
        Command::Proxy => 0x21,
    });
    let fam_byte = match endpoints {
        None => 0x00,
        Some(_) => {
            let f = match family {
                Family::Inet => 1,
                Family::Inet6 => 2,
                _ => 3,
            };
            let p = match protocol {
                Protocol::Unspec => 0,
                Protocol::Stream => 1,
                Protocol::Dgram => 2,
            };
            (f << 4) | p
        }
    };
    out.push(fam_byte);
    out.extend_from_slice(&[0, 0]);
    if let Some((s, d)) = endpoints {
        match (s, d) {
            (Endpoint::Ip(sip, sport), Endpoint::Ip(dip, dport)) => {
                for ip in [sip, dip] {
                    match ip {
                        IpBytes::V4(a) => out.extend_from_slice(a),
                        IpBytes::V6(a) => out.extend_from_slice(a),
                    }
                }
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
            }
            (Endpoint::Unix(sp), Endpoint::Unix(dp)) => {
                for path in [sp, dp] {
                    let b = path.as_bytes();
                    if b.len() > 107 || b.contains(&0) {
                        return Err(Error::usage(
                            "a UNIX socket path must be at most 107 bytes with no NUL",
                        ));
                    }
                    let mut field = [0u8; 108];
                    field[..b.len()].copy_from_slice(b);
                    out.extend_from_slice(&field);
                }
            }
            _ => unreachable!("family checked by build"),
        }
    }
    for &(kind, value) in tlvs {
        push_tlv(&mut out, kind, value)?;
    }
    let crc_at = if crc {
        let at = out.len();
        push_tlv(&mut out, PP2_TYPE_CRC32C, &[0; 4])?;
        Some(at)
    } else {
        None
    };
    let len = out.len() - 16;
    let len16 = u16::try_from(len)
        .map_err(|_| Error::usage(format!("v2 header body of {len} bytes exceeds 65535")))?;
    out[14..16].copy_from_slice(&len16.to_be_bytes());
    if let Some(at) = crc_at {
        let sum = crc32c::crc32c(&out);
        out[at + 3..at + 7].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(out)
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<()> {
    let len = u16::try_from(value.len()).map_err(|_| {
        Error::usage(format!(
            "TLV type 0x{kind:02x} value of {} bytes exceeds 65535",
            value.len()
        ))
    })?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Text of an endpoint's address, as exposed to callers.
pub fn endpoint_text(e: &Endpoint) -> (String, Option<u16>) {
    match e {
        Endpoint::Ip(ip, port) => (ip.to_text(), Some(*port)),
        Endpoint::Unix(p) => (p.clone(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn ok(data: &[u8]) -> Header<'_> {
        parse(data, DEFAULT_MAX_LENGTH).expect("parses")
    }

    #[test]
    fn v1_tcp4() {
        let h = ok(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n");
        assert_eq!(h.consumed, 44);
        assert_eq!(h.family, Family::Inet);
        assert_eq!(
            h.source.as_ref().map(endpoint_text),
            Some(("192.0.2.1".into(), Some(56324)))
        );
    }

    #[test]
    fn v1_every_prefix_is_incomplete() {
        let full = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        for n in 0..full.len() {
            match parse(&full[..n], DEFAULT_MAX_LENGTH) {
                Err(Error {
                    kind: ErrorKind::Incomplete { needed },
                    ..
                }) => assert!(needed >= 1 && n + needed <= full.len()),
                other => panic!("prefix {n}: {other:?}"),
            }
        }
        assert_eq!(ok(full).consumed, full.len());
    }

    #[test]
    fn v2_roundtrip_with_crc() {
        let s = endpoint("2001:db8::1", Some(1234)).unwrap();
        let d = endpoint("2001:db8::2", Some(25)).unwrap();
        let built = build(
            2,
            Command::Proxy,
            Some((&s, &d)),
            Protocol::Stream,
            &[(PP2_TYPE_AUTHORITY, b"mx.example")],
            true,
        )
        .unwrap();
        let h = ok(&built);
        assert!(h.crc32c);
        assert_eq!(h.consumed, built.len());
        assert_eq!(h.source, Some(s));
        let mut bad = built.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            parse(&bad, DEFAULT_MAX_LENGTH).unwrap_err().reason,
            "CRC32C checksum mismatch"
        );
    }
}
