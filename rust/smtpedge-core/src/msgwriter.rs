//! The message writer: one thread that makes accepted messages durable in
//! the queue (`smtpedge.queue.writer.MessageWriter`).
//!
//! Sessions hand it messages; it commits every message that arrived while
//! the previous commit was syncing in one transaction (one WAL append and one
//! `fdatasync` for all of them), then posts each message's outcome and wakes
//! the event loop through an eventfd. A message bigger than the inline limit,
//! or one whose content already is in a file, goes to a spool file first:
//! written to a temporary name (or adopted), synced, renamed, its directory
//! synced, before the row that names it is committed. A message exists once
//! its row is committed, and only then is it reported as stored.
//!
//! The thread never touches Python, so the event loop keeps the interpreter
//! to itself while messages are written. It uses the SQLite library the
//! process already has (the one Python's `sqlite3` module uses), so the two
//! share SQLite's knowledge of the file locks this process holds.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags};

/// One recipient's columns: address, NOTIFY, ORCPT type, ORCPT, ORCPT as
/// xtext, the raw parameters as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct RecipientRow {
    pub address: String,
    pub notify: Option<String>,
    pub orcpt_type: Option<String>,
    pub orcpt: Option<String>,
    pub orcpt_xtext: Option<String>,
    pub raw_params: String,
}

/// One message as the queue stores it. `path` names a file holding the
/// content (moved into the spool); `content` is then empty.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRow {
    pub id: String,
    pub arrival: f64,
    pub sender: String,
    pub mail_params: String,
    pub client: String,
    pub size: i64,
    pub header: Vec<u8>,
    pub content: Vec<u8>,
    pub path: Option<String>,
    pub recipients: Vec<RecipientRow>,
}

/// Why a message was not stored.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteError {
    /// A spool file could not be written: the system error and the file.
    Os {
        errno: i32,
        filename: Option<String>,
    },
    /// The transaction failed: SQLite's extended result code and message.
    Sqlite { code: i32, message: String },
}

/// A message's outcome: its token, and None if it is on stable storage.
pub type Outcome = (u64, Option<WriteError>);

enum Job {
    Row(u64, Box<MessageRow>),
    Stop,
}

#[derive(Default)]
struct Results {
    outcomes: Vec<Outcome>,
    batch_sizes: Vec<usize>,
}

struct Shared {
    results: Mutex<Results>,
    event: OwnedFd,
    batches: AtomicU64,
    committed: AtomicU64,
}

impl Shared {
    fn post(&self, outcomes: Vec<Outcome>, batch: Option<usize>) {
        {
            let mut r = self.results.lock().unwrap_or_else(|e| e.into_inner());
            r.outcomes.extend(outcomes);
            if let Some(n) = batch {
                r.batch_sizes.push(n);
            }
        }
        let one: u64 = 1;
        loop {
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
            let n = unsafe {
                libc::write(
                    self.event.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break; // (EAGAIN: the counter is full, so the reader is awake anyway)
            }
        }
    }
}

/// Where things are and how the writer batches.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub database: PathBuf,
    pub spool: PathBuf,
    /// Writers of one data directory take turns through an flock on this
    /// file before SQLite's own lock.
    pub turn_lock: PathBuf,
    pub inline_max: usize,
    pub batch_max: usize,
    /// After the first message of a batch, wait for as many as the previous
    /// batch had, at most this long per message and `gather_max` in all: a
    /// lone client's message goes at once, and a busy server commits groups
    /// (each costs a transaction, a WAL append and an `fdatasync`, whatever
    /// its size) without waiting longer than its sessions take to send.
    /// While it waits the writer sleeps and looks every `gather`.
    pub gather: Duration,
    pub gather_max: Duration,
}

pub struct MessageWriter {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

const INSERT_MESSAGE: &str = "INSERT INTO messages (id, arrival, sender, mail_params, client, \
     size, header, content, spool_file, next_attempt) VALUES (?,?,?,?,?,?,?,?,?,?)";
const INSERT_RECIPIENT: &str = "INSERT INTO recipients (message_id, idx, address, notify, \
     orcpt_type, orcpt, orcpt_xtext, raw_params) VALUES (?,?,?,?,?,?,?,?)";

fn sqlite_error(e: rusqlite::Error) -> WriteError {
    match e {
        rusqlite::Error::SqliteFailure(err, message) => WriteError::Sqlite {
            code: err.extended_code,
            message: message.unwrap_or_else(|| err.to_string()),
        },
        other => WriteError::Sqlite {
            code: 1, // SQLITE_ERROR
            message: other.to_string(),
        },
    }
}

fn os_error(e: &io::Error, file: &Path) -> WriteError {
    WriteError::Os {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        filename: Some(file.to_string_lossy().into_owned()),
    }
}

fn fsync_path(path: &Path, directory: bool) -> Result<(), WriteError> {
    let file = if directory {
        fs::File::open(path)
    } else {
        fs::OpenOptions::new().read(true).open(path)
    };
    file.and_then(|f| f.sync_all())
        .map_err(|e| os_error(&e, path))
}

impl MessageWriter {
    /// Open the database (its tables must exist) and start the thread.
    pub fn start(config: WriterConfig) -> Result<Self, WriteError> {
        let db = Connection::open_with_flags(
            &config.database,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_error)?;
        db.busy_timeout(Duration::from_secs(30))
            .map_err(sqlite_error)?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        )
        .map_err(sqlite_error)?;
        let turn = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&config.turn_lock)
            .map_err(|e| os_error(&e, &config.turn_lock))?;
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(WriteError::Os {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                filename: None,
            });
        }
        let shared = Arc::new(Shared {
            results: Mutex::new(Results::default()),
            // SAFETY: fd is a new descriptor that nothing else owns.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
            batches: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker {
            db,
            turn,
            config,
            shared: shared.clone(),
        };
        let thread = thread::Builder::new()
            .name("smtpedge-commit".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| WriteError::Os {
                errno: e.raw_os_error().unwrap_or(libc::EAGAIN),
                filename: None,
            })?;
        Ok(MessageWriter {
            shared,
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hand a message to the thread; false once the writer is closed.
    pub fn submit(&self, token: u64, row: MessageRow) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        match jobs.as_ref() {
            Some(tx) => tx.send(Job::Row(token, Box::new(row))).is_ok(),
            None => false,
        }
    }

    /// The eventfd that is readable while outcomes wait.
    pub fn fileno(&self) -> i32 {
        self.shared.event.as_raw_fd()
    }

    /// The outcomes posted since the last call, and the size of each batch
    /// committed meanwhile; clears the eventfd.
    pub fn take(&self) -> (Vec<Outcome>, Vec<usize>) {
        let mut buf = 0u64;
        // SAFETY: reads at most 8 bytes into a live u64 from our own eventfd
        // (non-blocking: EAGAIN when nothing was posted).
        unsafe {
            libc::read(
                self.shared.event.as_raw_fd(),
                (&mut buf as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        let mut r = self
            .shared
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut r.outcomes),
            std::mem::take(&mut r.batch_sizes),
        )
    }

    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    pub fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Relaxed)
    }

    /// Commit what was handed over, then stop the thread. Idempotent.
    pub fn close(&self) {
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Job::Stop);
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        self.close();
    }
}

struct Worker {
    db: Connection,
    turn: fs::File,
    config: WriterConfig,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(&mut self, jobs: mpsc::Receiver<Job>) {
        let mut last = 1usize;
        loop {
            let first = match jobs.recv() {
                Ok(Job::Row(token, row)) => (token, row),
                Ok(Job::Stop) | Err(_) => return,
            };
            // Wait for as many messages as the previous batch had, for at
            // most `gather` each (and `gather_max` in all); then take what
            // else has arrived. The writer looks every `gather` rather than
            // blocking on the channel: a blocked receiver makes every
            // session's send a futex wake-up of this thread (a system call
            // on the event loop per message), while a sleeping one is woken
            // by its own timer, once per slice, whatever the load.
            let wait = self
                .config
                .gather
                .saturating_mul(u32::try_from(last).unwrap_or(u32::MAX))
                .min(self.config.gather_max);
            let deadline = Instant::now() + wait;
            let mut batch = vec![first];
            let mut stop = false;
            while batch.len() < self.config.batch_max.max(1) {
                match jobs.try_recv() {
                    Ok(Job::Row(token, row)) => {
                        batch.push((token, row));
                        continue;
                    }
                    Ok(Job::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                if batch.len() >= last {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                thread::sleep(left.min(self.config.gather));
            }
            let n = batch.len();
            last = n;
            match self.commit(&batch) {
                Ok(errors) => {
                    let stored = errors.iter().filter(|e| e.is_none()).count();
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .committed
                        .fetch_add(stored as u64, Ordering::Relaxed);
                    let outcomes = batch.iter().map(|(t, _)| *t).zip(errors).collect();
                    self.shared.post(outcomes, Some(n));
                }
                Err(e) => {
                    let outcomes = batch.iter().map(|(t, _)| (*t, Some(e.clone()))).collect();
                    self.shared.post(outcomes, None);
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Write the batch's spool files, then its rows in one transaction.
    /// A message whose spool file fails fails alone; a failed transaction
    /// fails them all (and its spool files are removed).
    fn commit(
        &mut self,
        batch: &[(u64, Box<MessageRow>)],
    ) -> Result<Vec<Option<WriteError>>, WriteError> {
        let mut errors: Vec<Option<WriteError>> = vec![None; batch.len()];
        let mut files: HashMap<usize, String> = HashMap::new();
        for (i, (_, row)) in batch.iter().enumerate() {
            if row.path.is_some() || row.content.len() > self.config.inline_max {
                match self.write_spool_file(row) {
                    Ok(rel) => {
                        files.insert(i, rel);
                    }
                    Err(e) => {
                        errors[i] = Some(e);
                        if let Some(path) = &row.path {
                            let _ = fs::remove_file(path);
                        }
                    }
                }
            }
        }
        if errors.iter().all(|e| e.is_some()) {
            return Ok(errors);
        }
        self.take_turn(libc::LOCK_EX);
        let result = self.insert(batch, &errors, &files);
        if result.is_err() && !self.db.is_autocommit() {
            let _ = self.db.execute_batch("ROLLBACK");
        }
        self.take_turn(libc::LOCK_UN);
        match result {
            Ok(()) => Ok(errors),
            Err(e) => {
                for rel in files.values() {
                    let _ = fs::remove_file(self.config.spool.join(rel));
                }
                Err(e)
            }
        }
    }

    fn take_turn(&self, op: libc::c_int) {
        // SAFETY: flock on a descriptor this worker owns.
        while unsafe { libc::flock(self.turn.as_raw_fd(), op) } != 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break; // without the turn, SQLite's own lock still keeps order
            }
        }
    }

    fn insert(
        &mut self,
        batch: &[(u64, Box<MessageRow>)],
        errors: &[Option<WriteError>],
        files: &HashMap<usize, String>,
    ) -> Result<(), WriteError> {
        let db = &self.db;
        db.execute_batch("BEGIN IMMEDIATE").map_err(sqlite_error)?;
        {
            let mut st = db.prepare_cached(INSERT_MESSAGE).map_err(sqlite_error)?;
            for (i, (_, r)) in batch.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                let spooled = files.get(&i);
                let content: Option<&[u8]> = if spooled.is_some() {
                    None
                } else {
                    Some(&r.content)
                };
                st.execute(params![
                    r.id,
                    r.arrival,
                    r.sender,
                    r.mail_params,
                    r.client,
                    r.size,
                    r.header,
                    content,
                    spooled,
                    r.arrival
                ])
                .map_err(sqlite_error)?;
            }
        }
        {
            let mut st = db.prepare_cached(INSERT_RECIPIENT).map_err(sqlite_error)?;
            for (i, (_, r)) in batch.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                for (idx, rc) in r.recipients.iter().enumerate() {
                    st.execute(params![
                        r.id,
                        idx as i64,
                        rc.address,
                        rc.notify,
                        rc.orcpt_type,
                        rc.orcpt,
                        rc.orcpt_xtext,
                        rc.raw_params
                    ])
                    .map_err(sqlite_error)?;
                }
            }
        }
        db.execute_batch("COMMIT").map_err(sqlite_error)
    }

    /// The spool file of a message: `<spool>/<last two of id>/<id>`.
    fn write_spool_file(&self, row: &MessageRow) -> Result<String, WriteError> {
        let tail = &row.id[row.id.len().saturating_sub(2)..];
        let sub = self.config.spool.join(tail);
        if let Err(e) = fs::create_dir(&sub) {
            if e.kind() != io::ErrorKind::AlreadyExists || !sub.is_dir() {
                return Err(os_error(&e, &sub));
            }
        }
        let last = sub.join(&row.id);
        if let Some(path) = &row.path {
            let path = Path::new(path);
            fsync_path(path, false)?;
            fs::rename(path, &last).map_err(|e| os_error(&e, path))?;
        } else {
            let tmp = sub.join(format!("{}.tmp", row.id));
            let written = fs::File::create(&tmp).and_then(|mut f| {
                f.write_all(&row.content)?;
                f.sync_all()
            });
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(os_error(&e, &tmp));
            }
            fs::rename(&tmp, &last).map_err(|e| os_error(&e, &tmp))?;
        }
        fsync_path(&sub, true)?;
        Ok(format!("{tail}/{}", row.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "CREATE TABLE messages (id TEXT PRIMARY KEY, arrival REAL, sender TEXT, \
         mail_params TEXT, client TEXT, size INTEGER, header BLOB, content BLOB, spool_file TEXT, \
         next_attempt REAL); CREATE TABLE recipients (message_id TEXT, idx INTEGER, address TEXT, \
         notify TEXT, orcpt_type TEXT, orcpt TEXT, orcpt_xtext TEXT, raw_params TEXT, \
         PRIMARY KEY (message_id, idx));";

    fn row(id: &str, content: &[u8]) -> MessageRow {
        MessageRow {
            id: id.into(),
            arrival: 1.5,
            sender: "a@example.org".into(),
            mail_params: "{}".into(),
            client: "{}".into(),
            size: content.len() as i64,
            header: b"Received: x\r\n".to_vec(),
            content: content.to_vec(),
            path: None,
            recipients: vec![RecipientRow {
                address: "b@example.net".into(),
                notify: Some("FAILURE".into()),
                orcpt_type: None,
                orcpt: None,
                orcpt_xtext: None,
                raw_params: "[]".into(),
            }],
        }
    }

    fn outcomes(w: &MessageWriter, n: usize) -> Vec<Outcome> {
        let mut got = Vec::new();
        while got.len() < n {
            let mut pfd = libc::pollfd {
                fd: w.fileno(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            assert!(
                unsafe { libc::poll(&mut pfd, 1, 30_000) } > 0,
                "no outcome in 30 s"
            );
            got.extend(w.take().0);
        }
        got
    }

    fn setup() -> (PathBuf, WriterConfig) {
        let dir = std::env::temp_dir().join(format!(
            "smtpedge-msgwriter-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("spool")).unwrap();
        Connection::open(dir.join("queue.db"))
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
        let config = WriterConfig {
            database: dir.join("queue.db"),
            spool: dir.join("spool"),
            turn_lock: dir.join("queue.writer.lock"),
            inline_max: 8,
            batch_max: 256,
            gather: Duration::ZERO,
            gather_max: Duration::ZERO,
        };
        (dir, config)
    }

    #[test]
    fn stores_inline_and_spooled_messages() {
        let (dir, config) = setup();
        let w = MessageWriter::start(config).unwrap();
        assert!(w.submit(1, row("AAAAAAAAAAAAAA01", b"small")));
        assert!(w.submit(2, row("AAAAAAAAAAAAAA02", b"bigger than eight")));
        let mut got = outcomes(&w, 2);
        got.sort_by_key(|o| o.0);
        assert_eq!(got, vec![(1, None), (2, None)]);
        w.close();
        assert!(!w.submit(3, row("AAAAAAAAAAAAAA03", b"late")));
        assert_eq!(w.committed(), 2);
        let db = Connection::open(dir.join("queue.db")).unwrap();
        let spooled: Option<String> = db
            .query_row(
                "SELECT spool_file FROM messages WHERE id='AAAAAAAAAAAAAA02'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(spooled.as_deref(), Some("02/AAAAAAAAAAAAAA02"));
        let file = fs::read(dir.join("spool/02/AAAAAAAAAAAAAA02")).unwrap();
        assert_eq!(file, b"bigger than eight");
        let n: i64 = db
            .query_row("SELECT count(*) FROM recipients", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_transaction_fails_every_message_and_keeps_no_file() {
        let (dir, config) = setup();
        Connection::open(dir.join("queue.db"))
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON recipients \
                 BEGIN SELECT RAISE(ROLLBACK, 'database or disk is full'); END",
            )
            .unwrap();
        let w = MessageWriter::start(config).unwrap();
        w.submit(1, row("AAAAAAAAAAAAAA11", b"bigger than eight"));
        let got = outcomes(&w, 1);
        match &got[0].1 {
            Some(WriteError::Sqlite { code, message }) => {
                assert_eq!(*code & 0xff, 19); // SQLITE_CONSTRAINT
                assert_eq!(message, "database or disk is full");
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        w.close();
        assert!(!dir.join("spool/11/AAAAAAAAAAAAAA11").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
