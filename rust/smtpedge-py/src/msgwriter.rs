//! The message writer (`smtpedge.queue.writer.MessageWriter`, Rust backend).
//!
//! Its errors are the ones the pure-Python twin raises: `OSError` (the
//! subclass for its errno) naming the spool file, or the `sqlite3` module's
//! exception for SQLite's result code, with the same message and the same
//! `sqlite_errorcode` and `sqlite_errorname`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyMemoryError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use smtpedge_core::msgwriter::{self, MessageRow, RecipientRow, WriteError, WriterConfig};

const PRIMARY_NAMES: [&str; 29] = [
    "SQLITE_OK",
    "SQLITE_ERROR",
    "SQLITE_INTERNAL",
    "SQLITE_PERM",
    "SQLITE_ABORT",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_NOMEM",
    "SQLITE_READONLY",
    "SQLITE_INTERRUPT",
    "SQLITE_IOERR",
    "SQLITE_CORRUPT",
    "SQLITE_NOTFOUND",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL",
    "SQLITE_EMPTY",
    "SQLITE_SCHEMA",
    "SQLITE_TOOBIG",
    "SQLITE_CONSTRAINT",
    "SQLITE_MISMATCH",
    "SQLITE_MISUSE",
    "SQLITE_NOLFS",
    "SQLITE_AUTH",
    "SQLITE_FORMAT",
    "SQLITE_RANGE",
    "SQLITE_NOTADB",
    "SQLITE_NOTICE",
    "SQLITE_WARNING",
];

/// The exception Python's sqlite3 module raises for this result code.
fn sqlite_exception(py: Python<'_>, code: i32, message: &str) -> PyResult<PyObject> {
    let primary = code & 0xff;
    if primary == 7 {
        return Ok(PyMemoryError::new_err(message.to_owned())
            .into_value(py)
            .into_any());
    }
    let class = match primary {
        2 | 12 => "InternalError",
        1 | 3 | 4 | 5 | 6 | 8 | 9 | 10 | 13 | 14 | 15 | 16 | 17 => "OperationalError",
        18 => "DataError",
        19 | 20 => "IntegrityError",
        21 | 25 => "InterfaceError",
        _ => "DatabaseError",
    };
    let sqlite3 = py.import("sqlite3")?;
    let exc = sqlite3.getattr(class)?.call1((message,))?;
    exc.setattr("sqlite_errorcode", code)?;
    let primary_name = usize::try_from(primary)
        .ok()
        .and_then(|p| PRIMARY_NAMES.get(p).copied());
    let name: Option<String> = match primary_name {
        Some(name) if code == primary => Some(name.to_owned()),
        Some(name) => {
            // An extended code: the module's constant of that value in its family.
            let prefix = format!("{name}_");
            let mut found = None;
            for attr in sqlite3.dir()?.iter() {
                let attr: String = attr.extract()?;
                if attr.starts_with(&prefix)
                    && sqlite3.getattr(attr.as_str())?.extract::<i32>().ok() == Some(code)
                {
                    found = Some(attr);
                    break;
                }
            }
            found
        }
        None => None,
    };
    exc.setattr("sqlite_errorname", name)?;
    Ok(exc.unbind())
}

fn os_exception(py: Python<'_>, errno: i32, filename: Option<&str>) -> PyResult<PyObject> {
    let text: String = py
        .import("os")?
        .call_method1("strerror", (errno,))?
        .extract()?;
    let exc = match filename {
        Some(f) => py.get_type::<PyOSError>().call1((errno, text, f))?,
        None => py.get_type::<PyOSError>().call1((errno, text))?,
    };
    Ok(exc.unbind())
}

fn exception(py: Python<'_>, e: &WriteError) -> PyResult<PyObject> {
    match e {
        WriteError::Os { errno, filename } => os_exception(py, *errno, filename.as_deref()),
        WriteError::Sqlite { code, message } => sqlite_exception(py, *code, message),
    }
}

fn raise(py: Python<'_>, e: &WriteError) -> PyErr {
    match exception(py, e) {
        Ok(exc) => PyErr::from_value(exc.into_bound(py)),
        Err(err) => err,
    }
}

fn bytes_of(item: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<u8>> {
    let b = item
        .downcast::<PyBytes>()
        .map_err(|_| PyValueError::new_err(format!("{what} must be bytes")))?;
    Ok(b.as_bytes().to_vec())
}

fn row_of(row: &Bound<'_, PyAny>) -> PyResult<MessageRow> {
    let t = row
        .downcast::<PyTuple>()
        .map_err(|_| PyValueError::new_err("a message row is a tuple of 10 fields"))?;
    if t.len() != 10 {
        return Err(PyValueError::new_err(
            "a message row is a tuple of 10 fields",
        ));
    }
    let mut recipients = Vec::new();
    for rc in t.get_item(9)?.try_iter()? {
        let (address, notify, orcpt_type, orcpt, orcpt_xtext, raw_params) = rc?.extract::<(
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        )>()?;
        recipients.push(RecipientRow {
            address,
            notify,
            orcpt_type,
            orcpt,
            orcpt_xtext,
            raw_params,
        });
    }
    Ok(MessageRow {
        id: t.get_item(0)?.extract()?,
        arrival: t.get_item(1)?.extract()?,
        sender: t.get_item(2)?.extract()?,
        mail_params: t.get_item(3)?.extract()?,
        client: t.get_item(4)?.extract()?,
        size: t.get_item(5)?.extract()?,
        header: bytes_of(&t.get_item(6)?, "header")?,
        content: bytes_of(&t.get_item(7)?, "content")?,
        path: t.get_item(8)?.extract()?,
        recipients,
    })
}

/// Commits messages to the queue from a thread of its own, without the GIL.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct MessageWriter {
    inner: Arc<msgwriter::MessageWriter>,
}

#[pymethods]
impl MessageWriter {
    #[new]
    #[allow(clippy::too_many_arguments)] // the Python signature's keywords
    #[pyo3(signature = (database, spool, turn_lock, *, inline_max, batch_max = 256, gather = 0.0005, gather_max = 0.003))]
    fn new(
        py: Python<'_>,
        database: PathBuf,
        spool: PathBuf,
        turn_lock: PathBuf,
        inline_max: i64,
        batch_max: i64,
        gather: f64,
        gather_max: f64,
    ) -> PyResult<Self> {
        let inline_max = usize::try_from(inline_max)
            .map_err(|_| PyValueError::new_err("inline_max must be at least 0"))?;
        let batch_max = usize::try_from(batch_max)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| PyValueError::new_err("batch_max must be at least 1"))?;
        let second = |t: f64| t.is_finite() && (0.0..=1.0).contains(&t);
        if !second(gather) || !second(gather_max) {
            return Err(PyValueError::new_err(
                "gather and gather_max must be between 0 and 1 second",
            ));
        }
        let config = WriterConfig {
            database,
            spool,
            turn_lock,
            inline_max,
            batch_max,
            gather: Duration::from_secs_f64(gather),
            gather_max: Duration::from_secs_f64(gather_max),
        };
        let inner = msgwriter::MessageWriter::start(config).map_err(|e| raise(py, &e))?;
        Ok(MessageWriter {
            inner: Arc::new(inner),
        })
    }

    /// Hand a message row to the thread; its outcome comes from ``take``.
    fn submit(&self, token: u64, row: &Bound<'_, PyAny>) -> PyResult<()> {
        let row = row_of(row)?;
        if self.inner.submit(token, row) {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("the message writer is closed"))
        }
    }

    /// A descriptor that is readable while outcomes wait.
    fn fileno(&self) -> i32 {
        self.inner.fileno()
    }

    /// The outcomes since the last call, ``(token, None or the exception)``,
    /// and the size of each batch committed meanwhile.
    #[allow(clippy::type_complexity)]
    fn take(&self, py: Python<'_>) -> PyResult<(Vec<(u64, Option<PyObject>)>, Vec<usize>)> {
        let (outcomes, sizes) = self.inner.take();
        let mut out = Vec::with_capacity(outcomes.len());
        for (token, error) in outcomes {
            let exc = match error {
                None => None,
                Some(e) => Some(exception(py, &e)?),
            };
            out.push((token, exc));
        }
        Ok((out, sizes))
    }

    #[getter]
    fn batches(&self) -> u64 {
        self.inner.batches()
    }

    #[getter]
    fn committed(&self) -> u64 {
        self.inner.committed()
    }

    /// Commit what was handed over, then stop the thread.
    fn close(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        py.allow_threads(move || inner.close());
    }
}
