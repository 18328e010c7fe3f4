//! The gateway's clock: tokio time (so `tokio::time::pause()` drives expiry in
//! tests) as milliseconds since start, plus the wall-clock time of that start
//! for timestamps shown to clients.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_wall: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
            base_wall: SystemTime::now(),
        }
    }

    /// Milliseconds since the clock started.
    pub fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_millis() as u64
    }

    pub fn wall_at(&self, ms: u64) -> SystemTime {
        self.base_wall + Duration::from_millis(ms)
    }

    pub fn timestamp_at(&self, ms: u64) -> prost_types::Timestamp {
        self.wall_at(ms).into()
    }

    /// Milliseconds since the Unix epoch at `ms` on this clock: how times
    /// are written where other processes read them (the session store).
    pub fn epoch_ms(&self, ms: u64) -> u64 {
        epoch_ms(self.wall_at(ms))
    }

    /// This clock's milliseconds at `epoch` ms since the Unix epoch; a time
    /// before this clock started reads as its start.
    pub fn from_epoch_ms(&self, epoch: u64) -> u64 {
        epoch.saturating_sub(epoch_ms(self.base_wall))
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, ms)
}

/// A client's duration, when it is not negative and its nanos are in
/// range; checked before any arithmetic (prost's conversion negates the
/// seconds of a negative one, which overflows for `i64::MIN`).
pub fn duration_from_proto(d: &prost_types::Duration) -> Option<Duration> {
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(seconds, nanos))
}

/// A duration as the wire carries it (a ttl the gateway answers with, a
/// config shown to a client).
pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// When something kept for `ttl` from `now` (clock ms) expires: at least a
/// millisecond later; `None` without a ttl.
pub fn deadline(now: u64, ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|t| now.saturating_add(ms(t).max(1)))
}
