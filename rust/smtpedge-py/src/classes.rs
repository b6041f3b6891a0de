//! Result classes of `smtpedge._native`. They mirror the frozen dataclasses of
//! the pure-Python backend: same attributes, same repr, value equality and hash.

use pyo3::basic::CompareOp;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use smtpedge_core::{proxy, smtpline};

type Fields<'py> = Vec<(&'static str, Bound<'py, PyAny>)>;

/// repr, ==, != and hash from a list of named fields, as dataclasses do.
macro_rules! value_object {
    ($ty:ident, $name:literal) => {
        #[pymethods]
        impl $ty {
            fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
                let parts = self
                    .fields(py)?
                    .into_iter()
                    .map(|(k, v)| Ok(format!("{k}={}", v.repr()?)))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(format!("{}({})", $name, parts.join(", ")))
            }

            fn __richcmp__(
                &self,
                py: Python<'_>,
                other: &Bound<'_, PyAny>,
                op: CompareOp,
            ) -> PyResult<PyObject> {
                let Ok(other) = other.downcast::<$ty>() else {
                    return Ok(py.NotImplemented());
                };
                let a = self.values(py)?;
                let b = other.get().values(py)?;
                match op {
                    CompareOp::Eq => Ok(a.eq(b)?.into_pyobject(py)?.to_owned().into_any().unbind()),
                    CompareOp::Ne => Ok(a.ne(b)?.into_pyobject(py)?.to_owned().into_any().unbind()),
                    _ => Ok(py.NotImplemented()),
                }
            }

            fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
                self.values(py)?.hash()
            }
        }

        impl $ty {
            fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                PyTuple::new(py, self.fields(py)?.into_iter().map(|(_, v)| v))
            }
        }
    };
}

/// TLVs kept as spans of the header's own bytes: Python objects are made
/// only when asked for.
struct Tlvs {
    raw: Vec<u8>,
    spans: Vec<(u8, u32, u32)>,
}

impl Tlvs {
    fn new(base: &[u8], tlvs: &[proxy::Tlv<'_>]) -> Self {
        let origin = base.as_ptr() as usize;
        let spans = tlvs
            .iter()
            .map(|t| {
                let start = t.value.as_ptr() as usize - origin;
                (t.kind, start as u32, t.value.len() as u32)
            })
            .collect();
        Tlvs {
            raw: base.to_vec(),
            spans,
        }
    }

    fn value(&self, span: &(u8, u32, u32)) -> &[u8] {
        &self.raw[span.1 as usize..(span.1 + span.2) as usize]
    }

    fn first(&self, kind: u8) -> Option<&[u8]> {
        self.spans
            .iter()
            .find(|s| s.0 == kind)
            .map(|s| self.value(s))
    }

    fn bytes(&self, py: Python<'_>, kind: u8) -> Option<Py<PyBytes>> {
        self.first(kind).map(|v| PyBytes::new(py, v).unbind())
    }

    fn text(&self, kind: u8) -> Option<String> {
        // Values were checked to be UTF-8 (or ASCII) when the header was parsed.
        self.first(kind)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            self.spans
                .iter()
                .map(|s| (s.0, PyBytes::new(py, self.value(s)))),
        )
    }
}

fn endpoint(e: &Option<proxy::Endpoint>) -> Option<(String, Option<u16>)> {
    e.as_ref().map(proxy::endpoint_text)
}

/// A parsed PROXY header.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct ProxyHeader {
    version: u8,
    command: &'static str,
    family: &'static str,
    protocol: &'static str,
    source: Option<proxy::Endpoint>,
    destination: Option<proxy::Endpoint>,
    tlvs: Tlvs,
    crc32c: bool,
    consumed: usize,
}

impl ProxyHeader {
    pub fn from_core(data: &[u8], h: proxy::Header<'_>) -> Self {
        ProxyHeader {
            version: h.version,
            command: h.command.name(),
            family: h.family.name(),
            protocol: h.protocol.name(),
            tlvs: Tlvs::new(&data[..h.consumed], &h.tlvs),
            source: h.source,
            destination: h.destination,
            crc32c: h.crc32c,
            consumed: h.consumed,
        }
    }

    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Fields<'py>> {
        Ok(vec![
            ("version", self.version.into_pyobject(py)?.into_any()),
            ("command", self.command.into_pyobject(py)?.into_any()),
            ("family", self.family.into_pyobject(py)?.into_any()),
            ("protocol", self.protocol.into_pyobject(py)?.into_any()),
            (
                "source",
                endpoint(&self.source).into_pyobject(py)?.into_any(),
            ),
            (
                "destination",
                endpoint(&self.destination).into_pyobject(py)?.into_any(),
            ),
            ("tlvs", self.tlvs.tuple(py)?.into_any()),
            (
                "crc32c",
                self.crc32c.into_pyobject(py)?.to_owned().into_any(),
            ),
            ("consumed", self.consumed.into_pyobject(py)?.into_any()),
        ])
    }
}

value_object!(ProxyHeader, "ProxyHeader");

#[pymethods]
impl ProxyHeader {
    #[getter]
    fn version(&self) -> u8 {
        self.version
    }
    #[getter]
    fn command(&self) -> &'static str {
        self.command
    }
    #[getter]
    fn family(&self) -> &'static str {
        self.family
    }
    #[getter]
    fn protocol(&self) -> &'static str {
        self.protocol
    }
    #[getter]
    fn source(&self) -> Option<(String, Option<u16>)> {
        endpoint(&self.source)
    }
    #[getter]
    fn destination(&self) -> Option<(String, Option<u16>)> {
        endpoint(&self.destination)
    }
    #[getter]
    fn tlvs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.tlvs.tuple(py)
    }
    #[getter]
    fn crc32c(&self) -> bool {
        self.crc32c
    }
    #[getter]
    fn consumed(&self) -> usize {
        self.consumed
    }
    #[getter]
    fn alpn(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.tlvs.bytes(py, proxy::PP2_TYPE_ALPN)
    }
    #[getter]
    fn authority(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_TYPE_AUTHORITY)
    }
    #[getter]
    fn unique_id(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.tlvs.bytes(py, proxy::PP2_TYPE_UNIQUE_ID)
    }
    #[getter]
    fn netns(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_TYPE_NETNS)
    }
    #[getter]
    fn ssl(&self) -> PyResult<Option<SSLInfo>> {
        let Some(v) = self.tlvs.first(proxy::PP2_TYPE_SSL) else {
            return Ok(None);
        };
        let info = proxy::parse_ssl(v).map_err(crate::to_py_err)?;
        Ok(Some(SSLInfo {
            client: info.client,
            verify: info.verify,
            tlvs: Tlvs::new(v, &info.tlvs),
        }))
    }
}

/// The PP2_TYPE_SSL TLV of a PROXY v2 header.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct SSLInfo {
    client: u8,
    verify: u32,
    tlvs: Tlvs,
}

impl SSLInfo {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Fields<'py>> {
        Ok(vec![
            ("client", self.client.into_pyobject(py)?.into_any()),
            ("verify", self.verify.into_pyobject(py)?.into_any()),
            ("tlvs", self.tlvs.tuple(py)?.into_any()),
        ])
    }
}

value_object!(SSLInfo, "SSLInfo");

#[pymethods]
impl SSLInfo {
    #[getter]
    fn client(&self) -> u8 {
        self.client
    }
    #[getter]
    fn verify(&self) -> u32 {
        self.verify
    }
    #[getter]
    fn tlvs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.tlvs.tuple(py)
    }
    #[getter]
    fn version(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_VERSION)
    }
    #[getter]
    fn cn(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_CN)
    }
    #[getter]
    fn cipher(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_CIPHER)
    }
    #[getter]
    fn sig_alg(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_SIG_ALG)
    }
    #[getter]
    fn key_alg(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_KEY_ALG)
    }
    #[getter]
    fn group(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_GROUP)
    }
    #[getter]
    fn sig_scheme(&self) -> Option<String> {
        self.tlvs.text(proxy::PP2_SUBTYPE_SSL_SIG_SCHEME)
    }
    #[getter]
    fn client_cert(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.tlvs.bytes(py, proxy::PP2_SUBTYPE_SSL_CLIENT_CERT)
    }
}

/// A mailbox path as written.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct Path {
    #[pyo3(get)]
    local_part: String,
    #[pyo3(get)]
    domain: String,
}

impl Path {
    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Fields<'py>> {
        Ok(vec![
            (
                "local_part",
                self.local_part.clone().into_pyobject(py)?.into_any(),
            ),
            ("domain", self.domain.clone().into_pyobject(py)?.into_any()),
        ])
    }
}

value_object!(Path, "Path");

#[pymethods]
impl Path {
    #[getter]
    fn is_null(&self) -> bool {
        self.local_part.is_empty() && self.domain.is_empty()
    }

    #[getter]
    fn mailbox(&self) -> String {
        if self.domain.is_empty() {
            self.local_part.clone()
        } else {
            format!("{}@{}", self.local_part, self.domain)
        }
    }
}

type Params = Vec<(String, Option<String>)>;

/// A parsed SMTP command line.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct Command {
    verb: &'static str,
    #[pyo3(get)]
    argument: Option<String>,
    #[pyo3(get)]
    path: Option<Py<Path>>,
    params: Params,
    #[pyo3(get)]
    chunk_size: Option<u64>,
    #[pyo3(get)]
    last: bool,
}

impl Command {
    pub fn from_core(py: Python<'_>, c: smtpline::Command) -> PyResult<Self> {
        let path = match c.path {
            Some(p) => Some(Py::new(
                py,
                Path {
                    local_part: p.local_part,
                    domain: p.domain,
                },
            )?),
            None => None,
        };
        Ok(Command {
            verb: c.verb,
            argument: c.argument,
            path,
            params: c.params,
            chunk_size: c.chunk_size,
            last: c.last,
        })
    }

    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Fields<'py>> {
        Ok(vec![
            ("verb", self.verb.into_pyobject(py)?.into_any()),
            (
                "argument",
                self.argument.clone().into_pyobject(py)?.into_any(),
            ),
            (
                "path",
                match &self.path {
                    Some(p) => p.clone_ref(py).into_bound(py).into_any(),
                    None => py.None().into_bound(py),
                },
            ),
            ("params", self.params_tuple(py)?.into_any()),
            ("chunk_size", self.chunk_size.into_pyobject(py)?.into_any()),
            ("last", self.last.into_pyobject(py)?.to_owned().into_any()),
        ])
    }

    fn params_tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            self.params.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        )
    }
}

value_object!(Command, "Command");

#[pymethods]
impl Command {
    #[getter]
    fn verb(&self) -> &'static str {
        self.verb
    }
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        self.params_tuple(py)
    }
}

/// One SMTP reply line.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct Reply {
    #[pyo3(get)]
    code: u16,
    #[pyo3(get)]
    last: bool,
    #[pyo3(get)]
    status: Option<String>,
    #[pyo3(get)]
    text: String,
}

impl Reply {
    pub fn from_core(r: smtpline::Reply) -> Self {
        Reply {
            code: r.code,
            last: r.last,
            status: r.status,
            text: r.text,
        }
    }

    fn fields<'py>(&self, py: Python<'py>) -> PyResult<Fields<'py>> {
        Ok(vec![
            ("code", self.code.into_pyobject(py)?.into_any()),
            ("last", self.last.into_pyobject(py)?.to_owned().into_any()),
            ("status", self.status.clone().into_pyobject(py)?.into_any()),
            ("text", self.text.clone().into_pyobject(py)?.into_any()),
        ])
    }
}

value_object!(Reply, "Reply");
