//! `smtpedge._native`: the PyO3 binding of smtpedge-core.
//!
//! Thin by design: convert arguments, call the core, convert results. Errors
//! are raised as the exception classes of `smtpedge.errors`, so both backends
//! raise the very same classes; the one conversion lives in `to_py_err`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyString};

use smtpedge_core::ip::IpBytes;
use smtpedge_core::{certnames, crc32c, data, proxy, smtpline, xtext, Error, ErrorKind};

mod classes;
mod hosttable;
mod msgwriter;
use classes::{Command, Path, ProxyHeader, Reply, SSLInfo};
use hosttable::{HostTableLock, SharedHostTable};
use msgwriter::MessageWriter;

pyo3::import_exception!(smtpedge.errors, ProxyProtocolError);
pyo3::import_exception!(smtpedge.errors, IncompleteHeader);
pyo3::import_exception!(smtpedge.errors, SMTPSyntaxError);
pyo3::import_exception!(smtpedge.errors, DataError);
pyo3::import_exception!(smtpedge.errors, ReplySyntaxError);
pyo3::import_exception!(smtpedge.errors, XtextError);

pub(crate) fn to_py_err(e: Error) -> PyErr {
    let reason = e.reason.into_owned();
    match e.kind {
        ErrorKind::Proxy => ProxyProtocolError::new_err((reason, e.offset)),
        ErrorKind::Incomplete { needed } => IncompleteHeader::new_err((needed,)),
        ErrorKind::Smtp { code, status } => {
            SMTPSyntaxError::new_err((code, status, reason, e.offset))
        }
        ErrorKind::Reply => ReplySyntaxError::new_err((reason, e.offset)),
        ErrorKind::Xtext => XtextError::new_err((reason, e.offset)),
        ErrorKind::Usage => PyValueError::new_err(reason),
    }
}

// --- PROXY protocol ----------------------------------------------------------

/// Parse one PROXY header (v1 or v2) at the start of `data`.
#[pyfunction]
#[pyo3(signature = (data, *, max_length = 4096))]
fn parse_header(data: PyBackedBytes, max_length: usize) -> PyResult<ProxyHeader> {
    let h = proxy::parse(&data, max_length).map_err(to_py_err)?;
    Ok(ProxyHeader::from_core(&data, h))
}

type PyEndpoint = (String, Option<i64>);

/// Build a v1 or v2 PROXY header.
#[pyfunction]
#[pyo3(signature = (version = 2, command = "PROXY", source = None, destination = None, *,
                    protocol = "STREAM", tlvs = Vec::new(), crc32c = false))]
#[allow(clippy::too_many_arguments)]
fn build_header<'py>(
    py: Python<'py>,
    version: i64,
    command: &str,
    source: Option<PyEndpoint>,
    destination: Option<PyEndpoint>,
    protocol: &str,
    tlvs: Vec<(i64, PyBackedBytes)>,
    crc32c: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let command = match command {
        "PROXY" => proxy::Command::Proxy,
        "LOCAL" => proxy::Command::Local,
        other => {
            return Err(PyValueError::new_err(format!(
                "command must be 'PROXY' or 'LOCAL', not '{other}'"
            )))
        }
    };
    let protocol = proxy::Protocol::from_name(protocol).ok_or_else(|| {
        PyValueError::new_err(format!(
            "protocol must be 'UNSPEC', 'STREAM' or 'DGRAM', not '{protocol}'"
        ))
    })?;
    if source.is_some() != destination.is_some() {
        return Err(PyValueError::new_err(
            "give both source and destination, or neither",
        ));
    }
    let mut raw_tlvs: Vec<(u8, &[u8])> = Vec::with_capacity(tlvs.len());
    for (k, v) in &tlvs {
        let k = u8::try_from(*k)
            .map_err(|_| PyValueError::new_err(format!("TLV type {k} is out of range 0-255")))?;
        raw_tlvs.push((k, v));
    }
    let ends = match (source, destination) {
        (Some(s), Some(d)) => Some((
            proxy::endpoint(&s.0, s.1).map_err(to_py_err)?,
            proxy::endpoint(&d.0, d.1).map_err(to_py_err)?,
        )),
        _ => None,
    };
    let built = proxy::build(
        version,
        command,
        ends.as_ref().map(|(s, d)| (s, d)),
        protocol,
        &raw_tlvs,
        crc32c,
    )
    .map_err(to_py_err)?;
    Ok(PyBytes::new(py, &built))
}

/// CRC-32C (Castagnoli) of `data`.
#[pyfunction]
#[pyo3(name = "crc32c")]
fn py_crc32c(data: PyBackedBytes) -> u32 {
    crc32c::crc32c(&data)
}

// --- SMTP lines --------------------------------------------------------------

/// Parse one SMTP command line; raise SMTPSyntaxError carrying the reply.
#[pyfunction]
#[pyo3(signature = (line, *, smtputf8 = false, max_length = 2048))]
fn parse_command(
    py: Python<'_>,
    line: PyBackedBytes,
    smtputf8: bool,
    max_length: usize,
) -> PyResult<Command> {
    let c = smtpline::parse_command(&line, smtputf8, max_length).map_err(to_py_err)?;
    Command::from_core(py, c)
}

/// Parse one SMTP reply line.
#[pyfunction]
fn parse_reply(line: PyBackedBytes) -> PyResult<Reply> {
    let r = smtpline::parse_reply(&line).map_err(to_py_err)?;
    Ok(Reply::from_core(r))
}

// --- DATA --------------------------------------------------------------------

/// Incremental reader of the DATA stream (see smtpedge.data).
#[pyclass(module = "smtpedge._native")]
struct DataScanner {
    inner: data::Scanner,
    remainder: Py<PyBytes>,
    error: Option<PyObject>,
}

#[pymethods]
impl DataScanner {
    #[new]
    #[pyo3(signature = (max_size = None, *, bare_newline = "reject"))]
    fn new(py: Python<'_>, max_size: Option<i64>, bare_newline: &str) -> PyResult<Self> {
        let policy = match bare_newline {
            "reject" => data::BareNewline::Reject,
            "normalize" => data::BareNewline::Normalize,
            other => {
                return Err(PyValueError::new_err(format!(
                    "bare_newline must be 'reject' or 'normalize', not '{other}'"
                )))
            }
        };
        let max_size = match max_size {
            Some(m) if m < 0 => {
                return Err(PyValueError::new_err("max_size must not be negative"));
            }
            Some(m) => Some(m as u64),
            None => None,
        };
        Ok(DataScanner {
            inner: data::Scanner::new(max_size, policy),
            remainder: PyBytes::new(py, b"").unbind(),
            error: None,
        })
    }

    /// Scan a chunk; return the message bytes it holds.
    fn feed<'py>(&mut self, py: Python<'py>, data: PyBackedBytes) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::with_capacity(data.len());
        let used = self.inner.feed(&data, &mut out).map_err(to_py_err)?;
        if self.inner.done() {
            self.remainder = PyBytes::new(py, &data[used..]).unbind();
        }
        Ok(PyBytes::new(py, &out))
    }

    #[getter]
    fn done(&self) -> bool {
        self.inner.done()
    }

    #[getter]
    fn size(&self) -> u64 {
        self.inner.size
    }

    #[getter]
    fn consumed(&self) -> u64 {
        self.inner.consumed
    }

    #[getter]
    fn remainder(&self, py: Python<'_>) -> Py<PyBytes> {
        self.remainder.clone_ref(py)
    }

    #[getter]
    fn error(&mut self, py: Python<'_>) -> Option<PyObject> {
        if self.error.is_none() {
            if let Some((failure, at)) = self.inner.failure {
                let (code, status, text) = failure.reply();
                let err = DataError::new_err((code, status, text, at));
                self.error = Some(err.value(py).clone().into_any().unbind());
            }
        }
        self.error.as_ref().map(|e| e.clone_ref(py))
    }
}

/// Dot-stuff content for sending after DATA, terminator included.
#[pyfunction]
fn dot_stuff<'py>(py: Python<'py>, content: PyBackedBytes) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &data::dot_stuff(&content))
}

// --- xtext -------------------------------------------------------------------

/// Encode bytes as xtext (RFC 3461 section 4).
#[pyfunction]
fn xtext_encode(data: PyBackedBytes) -> String {
    xtext::encode(&data)
}

/// Decode strict xtext.
#[pyfunction]
fn xtext_decode<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let raw = xtext::decode(text).map_err(to_py_err)?;
    Ok(PyBytes::new(py, &raw))
}

/// Encode an address as utf-8-addr-xtext, or utf-8-addr-unitext (RFC 6533).
#[pyfunction]
#[pyo3(signature = (address, *, unitext = false))]
fn utf8_addr_encode(address: &str, unitext: bool) -> String {
    xtext::encode_utf8_addr(address, unitext)
}

/// Decode utf-8-addr-xtext or utf-8-addr-unitext.
#[pyfunction]
fn utf8_addr_decode(text: &str) -> PyResult<String> {
    xtext::decode_utf8_addr(text).map_err(to_py_err)
}

// --- certificate names -------------------------------------------------------

/// A name as A-labels; U-labels go through the shared IDNA helper. `None`
/// when the name is not a valid IDN (it then matches nothing).
fn ascii_name(py: Python<'_>, name: &str) -> PyResult<Option<String>> {
    if name.is_ascii() {
        return Ok(Some(name.to_owned()));
    }
    let conv = py
        .import("smtpedge._idna")?
        .getattr("to_ascii")?
        .call1((name,))?;
    conv.extract()
}

/// Whether the presented identifier `pattern` matches `hostname` (RFC 6125).
#[pyfunction]
fn match_hostname(py: Python<'_>, pattern: &str, hostname: &str) -> PyResult<bool> {
    if pattern.is_ascii() && hostname.is_ascii() {
        return Ok(certnames::match_hostname(pattern, hostname));
    }
    match (ascii_name(py, pattern)?, ascii_name(py, hostname)?) {
        (Some(p), Some(h)) => Ok(certnames::match_hostname(&p, &h)),
        _ => Ok(false),
    }
}

#[derive(FromPyObject)]
enum IpValue {
    Text(String),
    Raw(Vec<u8>),
}

/// Whether a certificate's identifiers are valid for `reference`.
#[pyfunction]
fn verify_names(
    py: Python<'_>,
    dns_names: Vec<String>,
    common_names: Vec<String>,
    ip_addresses: Vec<Bound<'_, PyAny>>,
    reference: &str,
) -> PyResult<bool> {
    let Some(reference) = ascii_name(py, reference)? else {
        return Ok(false);
    };
    let convert = |names: &[String]| -> PyResult<Vec<String>> {
        names
            .iter()
            .map(|n| Ok(ascii_name(py, n)?.unwrap_or_default()))
            .collect()
    };
    let dns = convert(&dns_names)?;
    let cns = convert(&common_names)?;
    let mut ips = Vec::with_capacity(ip_addresses.len());
    for a in &ip_addresses {
        let ip = if a.is_instance_of::<PyString>() {
            IpValue::Text(a.extract()?)
        } else if a.is_instance_of::<PyBytes>() {
            IpValue::Raw(a.extract()?)
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "ip_addresses must hold str or bytes",
            ));
        };
        let parsed = match ip {
            IpValue::Text(t) => IpBytes::parse(t.as_bytes()),
            IpValue::Raw(r) => match r.len() {
                4 => Some(IpBytes::V4(r[..].try_into().unwrap())),
                16 => Some(IpBytes::V6(r[..].try_into().unwrap())),
                _ => None,
            },
        };
        ips.extend(parsed);
    }
    let dns_ref: Vec<&str> = dns.iter().map(String::as_str).collect();
    let cn_ref: Vec<&str> = cns.iter().map(String::as_str).collect();
    Ok(certnames::verify_names(&dns_ref, &cn_ref, &ips, &reference))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Literal defaults in the signatures above keep the text signatures (and
    // the stub) readable; make sure they match the core's constants.
    debug_assert_eq!(proxy::DEFAULT_MAX_LENGTH, 4096);
    debug_assert_eq!(smtpline::DEFAULT_MAX_LINE, 2048);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    m.add("BUILD_PROFILE", profile)?;
    m.add_class::<ProxyHeader>()?;
    m.add_class::<SSLInfo>()?;
    m.add_class::<Command>()?;
    m.add_class::<Path>()?;
    m.add_class::<Reply>()?;
    m.add_class::<DataScanner>()?;
    m.add_class::<SharedHostTable>()?;
    m.add_class::<HostTableLock>()?;
    m.add_class::<MessageWriter>()?;
    m.add_function(wrap_pyfunction!(parse_header, m)?)?;
    m.add_function(wrap_pyfunction!(build_header, m)?)?;
    m.add_function(wrap_pyfunction!(py_crc32c, m)?)?;
    m.add_function(wrap_pyfunction!(parse_command, m)?)?;
    m.add_function(wrap_pyfunction!(parse_reply, m)?)?;
    m.add_function(wrap_pyfunction!(dot_stuff, m)?)?;
    m.add_function(wrap_pyfunction!(xtext_encode, m)?)?;
    m.add_function(wrap_pyfunction!(xtext_decode, m)?)?;
    m.add_function(wrap_pyfunction!(utf8_addr_encode, m)?)?;
    m.add_function(wrap_pyfunction!(utf8_addr_decode, m)?)?;
    m.add_function(wrap_pyfunction!(match_hostname, m)?)?;
    m.add_function(wrap_pyfunction!(verify_names, m)?)?;
    Ok(())
}
