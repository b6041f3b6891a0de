//! The per-client connection table shared by worker processes: an
//! open-addressing hash table in an anonymous shared mapping, made before
//! the workers fork, guarded by a process-shared robust mutex in the same
//! mapping.
//!
//! Taking and giving back the lock costs no system call unless another
//! worker holds it; when a holder dies inside it, the next taker is told
//! (`EOWNERDEAD`), marks the mutex consistent and goes on, so a worker killed
//! in the table cannot wedge the others. Each entry holds a 16-byte key, the
//! client's smoothed connection rate and its time, and one connection count
//! per worker, so that the supervisor can clear exactly what a dead worker
//! held. Twin of `python/smtpedge/_pure/hosttable.py`.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::net::IpAddr;
use std::ptr;

use crate::{Error, Result};

const MUTEX_SPACE: usize = 64; // pthread_mutex_t is 40 bytes on Linux x86_64, 48 on aarch64
const HEADER: usize = MUTEX_SPACE + 64; // the mutex, then the count of used slots
const USED_AT: usize = MUTEX_SPACE;
// An entry: key (16), used flag (u32) and padding, rate (f64), time (f64), counts (i32 each).
const KEY: usize = 0;
const FLAG: usize = 16;
const RATE: usize = 24;
const TIME: usize = 32;
const COUNTS: usize = 40;
const EMPTY: [u8; 16] = [0; 16];

/// What the table knows of one client: open connections (all workers), its
/// rate and the time of the rate.
pub type HostState = (i64, f64, f64);

/// The 16-byte key of a client: its address as IPv6 (IPv4 mapped), or a hash
/// of the text when it is not an address. A zone (`%eth0`) is ignored.
pub fn host_key(host: &str) -> [u8; 16] {
    let bare = host.split('%').next().unwrap_or("");
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
        Ok(IpAddr::V6(v6)) => v6.octets(),
        Err(_) => {
            let mut out = [0u8; 16];
            for (half, seed) in [(0usize, b'a'), (8, b'b')] {
                let mut h = DefaultHasher::new(); // fixed keys: the same in every process
                h.write_u8(seed);
                h.write(host.as_bytes());
                out[half..half + 8].copy_from_slice(&h.finish().to_le_bytes());
            }
            if out == EMPTY {
                out[0] = 1; // never the empty slot's key
            }
            out
        }
    }
}

fn os_error(what: &str, code: i32) -> Error {
    Error::usage(format!(
        "{what}: {}",
        std::io::Error::from_raw_os_error(code)
    ))
}

/// The shared table. Create it before forking: every process that inherits
/// the mapping sees the same entries and the same lock.
pub struct SharedTable {
    base: *mut u8,
    len: usize,
    slots: usize,
    workers: usize,
    stride: usize,
}

// The mapping is shared memory guarded by its own mutex; the pointer may move
// between threads.
unsafe impl Send for SharedTable {}
unsafe impl Sync for SharedTable {}

impl SharedTable {
    pub fn new(slots: usize, workers: usize) -> Result<SharedTable> {
        if slots == 0 || slots & (slots - 1) != 0 {
            return Err(Error::usage("slots must be a power of two"));
        }
        if !(1..=1024).contains(&workers) {
            return Err(Error::usage("workers must be between 1 and 1024"));
        }
        let stride = (COUNTS + 4 * workers).div_ceil(8) * 8;
        let len = HEADER + slots * stride;
        // SAFETY: an anonymous shared mapping of `len` bytes, zero-filled by
        // the kernel; checked for failure below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error("cannot map the host table", errno()));
        }
        let table = SharedTable {
            base: base as *mut u8,
            len,
            slots,
            workers,
            stride,
        };
        table.init_mutex()?;
        Ok(table)
    }

    fn init_mutex(&self) -> Result<()> {
        // SAFETY: the attribute object lives on the stack for these calls; the
        // mutex is initialised once, in memory nobody else sees yet.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            let mut rc = libc::pthread_mutexattr_init(&mut attr);
            if rc == 0 {
                rc = libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            }
            if rc == 0 {
                rc = libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            }
            if rc == 0 {
                rc = libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_ERRORCHECK);
            }
            if rc == 0 {
                rc = libc::pthread_mutex_init(self.mutex(), &attr);
            }
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc != 0 {
                return Err(os_error("cannot make the host table lock", rc));
            }
        }
        Ok(())
    }

    fn mutex(&self) -> *mut libc::pthread_mutex_t {
        const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= MUTEX_SPACE);
        self.base as *mut libc::pthread_mutex_t
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Take the lock. A holder that died inside it leaves it to us, marked
    /// consistent again (its half-done update is at worst one count off).
    pub fn lock(&self) -> Result<()> {
        // SAFETY: the mutex was initialised in `new` and lives as long as the mapping.
        let rc = unsafe { libc::pthread_mutex_lock(self.mutex()) };
        self.taken(rc).map(|_| ())
    }

    /// Take the lock if no one holds it: true when taken.
    pub fn try_lock(&self) -> Result<bool> {
        // SAFETY: as in `lock`.
        let rc = unsafe { libc::pthread_mutex_trylock(self.mutex()) };
        self.taken(rc)
    }

    fn taken(&self, rc: i32) -> Result<bool> {
        match rc {
            0 => Ok(true),
            libc::EBUSY => Ok(false),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex now (EOWNERDEAD means we got it).
                unsafe { libc::pthread_mutex_consistent(self.mutex()) };
                Ok(true)
            }
            libc::EDEADLK => Err(Error::usage("the host table lock is already held")),
            other => Err(os_error("cannot take the host table lock", other)),
        }
    }

    /// Give the lock back; giving back a lock this thread does not hold does
    /// nothing.
    pub fn unlock(&self) {
        // SAFETY: as in `lock`; an error-checking mutex refuses (EPERM) an
        // unlock by a thread that does not hold it, which is what we want.
        unsafe { libc::pthread_mutex_unlock(self.mutex()) };
    }

    fn entry(&self, i: usize) -> *mut u8 {
        debug_assert!(i < self.slots);
        // SAFETY: i < slots, so the entry lies inside the mapping.
        unsafe { self.base.add(HEADER + i * self.stride) }
    }

    fn key_at(&self, i: usize) -> [u8; 16] {
        let mut k = [0u8; 16];
        // SAFETY: 16 bytes at the start of an entry inside the mapping.
        unsafe { ptr::copy_nonoverlapping(self.entry(i).add(KEY), k.as_mut_ptr(), 16) };
        k
    }

    fn read<T: Copy>(&self, i: usize, at: usize) -> T {
        // SAFETY: every field offset is inside the entry and suitably aligned
        // (entries are 8-byte multiples from a page-aligned base).
        unsafe { ptr::read_volatile(self.entry(i).add(at) as *const T) }
    }

    fn write<T: Copy>(&self, i: usize, at: usize, value: T) {
        // SAFETY: as in `read`.
        unsafe { ptr::write_volatile(self.entry(i).add(at) as *mut T, value) }
    }

    fn count_at(&self, i: usize, worker: usize) -> i32 {
        self.read(i, COUNTS + 4 * worker)
    }

    fn used(&self) -> i64 {
        // SAFETY: the used-slot count sits in the header, 8-byte aligned.
        unsafe { ptr::read_volatile(self.base.add(USED_AT) as *const i64) }
    }

    fn set_used(&self, n: i64) {
        // SAFETY: as in `used`.
        unsafe { ptr::write_volatile(self.base.add(USED_AT) as *mut i64, n) }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: &[u8; 16]) -> (usize, bool) {
        let mask = self.slots - 1;
        let mut i = crate::crc32c::crc32c(key) as usize & mask;
        for _ in 0..self.slots {
            let stored = self.key_at(i);
            if &stored == key {
                return (i, true);
            }
            if stored == EMPTY {
                return (i, false);
            }
            i = (i + 1) & mask;
        }
        panic!("host table full"); // compaction keeps it at most three quarters full
    }

    fn state_at(&self, i: usize) -> HostState {
        let open: i64 = (0..self.workers)
            .map(|w| i64::from(self.count_at(i, w)))
            .sum();
        (open, self.read(i, RATE), self.read(i, TIME))
    }

    pub fn get(&self, host: &str) -> Option<HostState> {
        match self.find(&host_key(host)) {
            (i, true) => Some(self.state_at(i)),
            _ => None,
        }
    }

    /// Add `delta` to `worker`'s count for the host (never below zero) and set
    /// its rate.
    pub fn update(&self, worker: usize, host: &str, delta: i64, rate: f64, when: f64) {
        let key = host_key(host);
        let (mut i, found) = self.find(&key);
        if !found {
            if (self.used() + 1) * 4 > self.slots as i64 * 3 {
                self.compact();
                i = self.find(&key).0;
            }
            self.set_used(self.used() + 1);
            // SAFETY: 16 bytes at the start of an entry inside the mapping.
            unsafe { ptr::copy_nonoverlapping(key.as_ptr(), self.entry(i).add(KEY), 16) };
            self.write(i, FLAG, 1u32);
            for w in 0..self.workers {
                self.write(i, COUNTS + 4 * w, 0i32);
            }
        }
        let count = (i64::from(self.count_at(i, worker)) + delta).clamp(0, i64::from(i32::MAX));
        self.write(i, COUNTS + 4 * worker, count as i32);
        self.write(i, RATE, rate);
        self.write(i, TIME, when);
    }

    /// Clear every count of `worker` (it died, its connections are gone);
    /// the other workers' counts and every rate stay. Takes the lock.
    pub fn forget_worker(&self, worker: usize) -> Result<()> {
        self.lock()?;
        for i in 0..self.slots {
            if self.read::<u32>(i, FLAG) != 0 && self.count_at(i, worker) != 0 {
                self.write(i, COUNTS + 4 * worker, 0i32);
            }
        }
        self.unlock();
        Ok(())
    }

    /// Keep the entries of clients with open connections, then those with
    /// the newest rates, up to half the slots; drop the rest.
    fn compact(&self) {
        let mut live: Vec<(bool, f64, Vec<u8>)> = Vec::new();
        for i in 0..self.slots {
            if self.read::<u32>(i, FLAG) != 0 {
                let (open, _, when) = self.state_at(i);
                // SAFETY: one whole entry inside the mapping.
                let bytes = unsafe { std::slice::from_raw_parts(self.entry(i), self.stride) };
                live.push((open > 0, when, bytes.to_vec()));
            }
        }
        live.sort_by(|a, b| {
            (b.0, b.1)
                .partial_cmp(&(a.0, a.1))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        live.truncate(self.slots / 2);
        // SAFETY: every entry lies inside the mapping.
        unsafe { ptr::write_bytes(self.entry(0), 0, self.slots * self.stride) };
        let mask = self.slots - 1;
        for (_, _, bytes) in &live {
            let key: [u8; 16] = bytes[..16].try_into().expect("16-byte key");
            let mut i = crate::crc32c::crc32c(&key) as usize & mask;
            while self.key_at(i) != EMPTY {
                i = (i + 1) & mask;
            }
            // SAFETY: one whole entry inside the mapping.
            unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), self.entry(i), self.stride) };
        }
        self.set_used(live.len() as i64);
    }
}

impl Drop for SharedTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once. (The mutex is not
        // destroyed: other processes may still use their copy of the mapping.)
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_floor_at_zero() {
        let t = SharedTable::new(64, 2).unwrap();
        assert_eq!(t.get("192.0.2.1"), None);
        t.update(0, "192.0.2.1", 2, 1.5, 100.0);
        t.update(1, "192.0.2.1", 1, 1.5, 100.0);
        assert_eq!(t.get("192.0.2.1"), Some((3, 1.5, 100.0)));
        t.update(0, "192.0.2.1", -5, 2.0, 101.0);
        assert_eq!(t.get("192.0.2.1"), Some((1, 2.0, 101.0)));
        t.update(0, "not-an-address", 1, 0.0, 0.0);
        assert_eq!(t.get("not-an-address"), Some((1, 0.0, 0.0)));
        assert_eq!(host_key("::ffff:192.0.2.1"), host_key("192.0.2.1"));
        assert_eq!(host_key("fe80::1%eth0"), host_key("fe80::1"));
    }

    #[test]
    fn compaction_keeps_open_and_newest() {
        let t = SharedTable::new(64, 1).unwrap();
        t.update(0, "10.0.0.1", 1, 0.0, 0.0);
        for i in 0..200 {
            t.update(0, &format!("10.1.0.{i}"), 0, 1.0, f64::from(i));
        }
        assert_eq!(t.get("10.0.0.1"), Some((1, 0.0, 0.0)));
        assert_eq!(t.get("10.1.0.199"), Some((0, 1.0, 199.0)));
        assert!(t.used() as usize <= 48);
    }

    #[test]
    fn lock_refuses_a_second_take_and_bad_sizes() {
        let t = SharedTable::new(64, 1).unwrap();
        t.lock().unwrap();
        assert!(t.lock().is_err());
        assert!(t.try_lock().is_err(), "held by this thread");
        t.unlock();
        t.unlock(); // not held: nothing happens
        t.lock().unwrap();
        t.unlock();
        assert!(SharedTable::new(63, 1).is_err());
        assert!(SharedTable::new(64, 0).is_err());
        assert!(SharedTable::new(64, 1025).is_err());
    }
}
