//! The shared host table (`smtpedge.receiving.hosttable.SharedHostTable`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use smtpedge_core::hosttable::SharedTable;

fn usage(e: smtpedge_core::Error) -> PyErr {
    PyValueError::new_err(e.reason.into_owned())
}

/// The table's lock, a context manager: taken without a system call when no
/// other worker holds it.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct HostTableLock {
    table: Arc<SharedTable>,
}

#[pymethods]
impl HostTableLock {
    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        let lock_error = |e: smtpedge_core::Error| PyRuntimeError::new_err(e.reason.into_owned());
        if self.table.try_lock().map_err(lock_error)? {
            return Ok(());
        }
        // Another worker holds it (or this thread does: then lock() says so).
        let table = self.table.clone();
        py.allow_threads(move || table.lock()).map_err(lock_error)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.table.unlock();
    }
}

/// Per-client connection counts and rates in memory shared by the worker
/// processes that fork after it is made.
#[pyclass(frozen, module = "smtpedge._native")]
pub struct SharedHostTable {
    table: Arc<SharedTable>,
    lock: Py<HostTableLock>,
    worker: AtomicUsize,
}

#[pymethods]
impl SharedHostTable {
    #[new]
    #[pyo3(signature = (slots = 65536, workers = 1))]
    fn new(py: Python<'_>, slots: i64, workers: i64) -> PyResult<Self> {
        let slots = usize::try_from(slots)
            .map_err(|_| PyValueError::new_err("slots must be a power of two"))?;
        let workers = usize::try_from(workers)
            .map_err(|_| PyValueError::new_err("workers must be between 1 and 1024"))?;
        let table = Arc::new(SharedTable::new(slots, workers).map_err(usage)?);
        let lock = Py::new(
            py,
            HostTableLock {
                table: table.clone(),
            },
        )?;
        Ok(SharedHostTable {
            table,
            lock,
            worker: AtomicUsize::new(0),
        })
    }

    #[getter]
    fn slots(&self) -> usize {
        self.table.slots()
    }

    #[getter]
    fn workers(&self) -> usize {
        self.table.workers()
    }

    #[getter]
    fn lock(&self, py: Python<'_>) -> Py<HostTableLock> {
        self.lock.clone_ref(py)
    }

    /// The column this process counts in.
    #[getter]
    fn get_worker(&self) -> usize {
        self.worker.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_worker(&self, worker: i64) -> PyResult<()> {
        self.worker.store(self.column(worker)?, Ordering::Relaxed);
        Ok(())
    }

    /// (open connections, rate, time of the rate), or None.
    fn get(&self, host: &str) -> Option<(i64, f64, f64)> {
        self.table.get(host)
    }

    /// Add `delta` to this worker's count for the host; set its rate.
    fn update(&self, host: &str, delta: i64, rate: f64, when: f64) {
        self.table
            .update(self.worker.load(Ordering::Relaxed), host, delta, rate, when);
    }

    /// Clear every count of a worker that died; the others' stay.
    fn forget_worker(&self, py: Python<'_>, worker: i64) -> PyResult<()> {
        let column = self.column(worker)?;
        let table = self.table.clone();
        py.allow_threads(move || table.forget_worker(column))
            .map_err(|e| PyRuntimeError::new_err(e.reason.into_owned()))
    }
}

impl SharedHostTable {
    fn column(&self, worker: i64) -> PyResult<usize> {
        match usize::try_from(worker) {
            Ok(w) if w < self.table.workers() => Ok(w),
            _ => Err(PyValueError::new_err(format!(
                "worker must be between 0 and {}",
                self.table.workers() - 1
            ))),
        }
    }
}
