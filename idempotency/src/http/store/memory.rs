//! [`MemoryStore`]: keys in a map, for tests and single-process services.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leases::{Clock, DatabaseClock, Lease};

use super::{Acquire, Record, RecordState, ScopedKey, Store, StoredResponse};
use crate::{Error, Fingerprint, Result};

/// Idempotency keys in memory, with the same semantics as [`PostgresStore`](crate::PostgresStore)
/// (leases with fencing tokens, retention checked on read) but nothing shared between processes
/// and nothing kept across a restart. It cannot join a transaction, so [`Tx`](crate::Tx) is not
/// available behind it.
///
/// Cloning is cheap; clones share the keys.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    entries: HashMap<ScopedKey, Entry>,
    keys_by_id: HashMap<i64, ScopedKey>,
}

#[derive(Debug)]
struct Entry {
    id: i64,
    fingerprint: Fingerprint,
    created_at: DateTime<Utc>,
    retain_until: DateTime<Utc>,
    token: i64,
    lease_expires_at: Option<DateTime<Utc>>,
    response: Option<StoredResponse>,
}

impl Entry {
    /// Whether `lease` is this entry's current, unfinished lease.
    fn held_by(&self, lease: &Lease<i64>) -> bool {
        self.id == lease.id && self.token == lease.token && self.lease_expires_at.is_some()
    }

    fn state(&self) -> RecordState {
        match (&self.response, self.lease_expires_at) {
            (Some(response), _) => RecordState::Completed(response.clone()),
            (None, None) => RecordState::Released,
            (None, Some(lease_expires_at)) => RecordState::InFlight { lease_expires_at },
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The key's record, if it exists and is within its retention: what an operator (or a test)
    /// looks at; the layer itself never needs it.
    ///
    /// # Errors
    ///
    /// Never; a `Result` like [`PostgresStore::get`](crate::PostgresStore::get).
    pub async fn get(&self, key: &ScopedKey) -> Result<Option<Record>> {
        let now = self.now();
        Ok(self
            .lock()
            .entries
            .get(key)
            .filter(|e| e.retain_until > now)
            .map(|e| Record {
                fingerprint: e.fingerprint,
                created_at: e.created_at,
                retain_until: e.retain_until,
                token: e.token,
                state: e.state(),
            }))
    }

    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            clock: Arc::new(DatabaseClock),
        }
    }

    /// Replaces the clock (a [`ManualClock`](leases::ManualClock) in tests). Default: the
    /// system clock (a clock that returns `None`, like [`DatabaseClock`], means "now").
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Deletes keys past their retention (and not leased). Returns how many were deleted.
    pub fn purge_expired(&self) -> u64 {
        let now = self.now();
        let mut state = self.lock();
        let State {
            entries,
            keys_by_id,
            ..
        } = &mut *state;
        let before = entries.len();
        entries.retain(|_, e| {
            let keep =
                e.retain_until > now || e.lease_expires_at.is_some_and(|expiry| expiry > now);
            if !keep {
                keys_by_id.remove(&e.id);
            }
            keep
        });
        (before - entries.len()) as u64
    }

    /// How many keys the store holds (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now().unwrap_or_else(Utc::now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_lease<T>(&self, lease: &Lease<i64>, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut state = self.lock();
        let State {
            entries,
            keys_by_id,
            ..
        } = &mut *state;
        keys_by_id
            .get(&lease.id)
            .and_then(|key| entries.get_mut(key))
            .filter(|e| e.held_by(lease))
            .map(f)
    }
}

fn delta(what: &str, d: Duration) -> Result<TimeDelta> {
    if d.is_zero() {
        return Err(Error::InvalidConfig(format!(
            "{what} must be greater than zero"
        )));
    }
    TimeDelta::from_std(d)
        .map_err(|_| Error::InvalidConfig(format!("{what} of {d:?} is too large")))
}

impl Store for MemoryStore {
    async fn acquire(
        &self,
        key: &ScopedKey,
        fingerprint: &Fingerprint,
        lease_ttl: Duration,
        retention: Duration,
    ) -> Result<Acquire> {
        let ttl = delta("lease ttl", lease_ttl)?;
        let retention = delta("retention", retention)?;
        let now = self.now();
        let mut state = self.lock();
        let State {
            next_id,
            entries,
            keys_by_id,
        } = &mut *state;
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            *next_id += 1;
            keys_by_id.insert(*next_id, key.clone());
            Entry {
                id: *next_id,
                fingerprint: *fingerprint,
                created_at: now,
                retain_until: now, // past: the new entry is free
                token: 0,
                lease_expires_at: None,
                response: None,
            }
        });
        let unfinished = entry.response.is_none();
        let released = unfinished && entry.lease_expires_at.is_none();
        let holder_died = unfinished
            && entry.lease_expires_at.is_some_and(|expiry| expiry <= now)
            && entry.fingerprint == *fingerprint;
        let free = entry.retain_until <= now || released || holder_died;
        if free {
            entry.fingerprint = *fingerprint;
            entry.created_at = now;
            entry.retain_until = now + retention;
            entry.token += 1;
            entry.lease_expires_at = Some(now + ttl);
            entry.response = None;
            return Ok(Acquire::Acquired(Lease {
                id: entry.id,
                token: entry.token,
                expires_at: now + ttl,
                attempts: i32::try_from(entry.token).unwrap_or(i32::MAX),
                holder: entry.id,
            }));
        }
        if entry.fingerprint != *fingerprint {
            return Ok(Acquire::Mismatch);
        }
        Ok(match (&entry.response, entry.lease_expires_at) {
            (Some(response), _) => Acquire::Completed(response.clone()),
            (None, expiry) => Acquire::InFlight {
                lease_expires_at: Some(expiry.unwrap_or(now)),
            },
        })
    }

    async fn renew(&self, lease: &Lease<i64>, ttl: Duration) -> Result<bool> {
        let ttl = delta("lease ttl", ttl)?;
        let now = self.now();
        Ok(self
            .with_lease(lease, |e| e.lease_expires_at = Some(now + ttl))
            .is_some())
    }

    async fn complete(&self, lease: &Lease<i64>, response: &StoredResponse) -> Result<bool> {
        Ok(self
            .with_lease(lease, |e| {
                e.lease_expires_at = None;
                e.response = Some(response.clone());
            })
            .is_some())
    }

    async fn release(&self, lease: &Lease<i64>) -> Result<bool> {
        Ok(self
            .with_lease(lease, |e| e.lease_expires_at = None)
            .is_some())
    }
}
