//! A session's request rate limit: its client config's `rate_limit`
//! (`requests_per_second`, `burst`) as a token bucket that every data call
//! takes one token from. The bucket holds `burst` tokens (one second's worth
//! when `burst` is 0) and refills continuously; `requests_per_second` 0
//! means no limit, so no bucket.

use parking_lot::Mutex;

use crate::proto::config::v1::RateLimitConfig;

pub struct RateLimiter {
    per_ms: f64,
    capacity: f64,
    /// Tokens left and when they were counted (session clock, ms). Held
    /// only for the arithmetic, never across an await.
    state: Mutex<(f64, u64)>,
}

impl RateLimiter {
    /// The bucket for a config's limit, full; `None` when it sets none.
    pub fn new(limit: Option<&RateLimitConfig>, now_ms: u64) -> Option<RateLimiter> {
        let (rps, burst) =
            crate::config::policy::rate_of(limit.map(|l| (l.requests_per_second, l.burst)))?;
        let (rate, capacity) = (f64::from(rps), f64::from(burst));
        Some(RateLimiter {
            per_ms: rate / 1000.0,
            capacity,
            state: Mutex::new((capacity, now_ms)),
        })
    }

    /// Takes a token, or says how many milliseconds until one is there.
    pub fn take(&self, now_ms: u64) -> Result<(), u64> {
        let mut state = self.state.lock();
        let (tokens, at) = *state;
        let refilled = (tokens + now_ms.saturating_sub(at) as f64 * self.per_ms).min(self.capacity);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now_ms.max(at));
            Ok(())
        } else {
            *state = (refilled, now_ms.max(at));
            Err(((1.0 - refilled) / self.per_ms).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests_per_second: i32, burst: i32) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second,
            burst,
        }
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_refills_at_the_rate() {
        let l = RateLimiter::new(Some(&limit(10, 3)), 1_000).unwrap();
        assert_eq!(l.take(1_000), Ok(()));
        assert_eq!(l.take(1_000), Ok(()));
        assert_eq!(l.take(1_000), Ok(()));
        // Empty: one token every 100 ms.
        assert_eq!(l.take(1_000), Err(100));
        assert_eq!(l.take(1_040), Err(60));
        assert_eq!(l.take(1_100), Ok(()));
        assert_eq!(l.take(1_100), Err(100));
        // A long pause refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(l.take(60_000), Ok(()));
        }
        assert!(l.take(60_000).is_err());
    }

    #[test]
    fn burst_zero_means_one_seconds_worth_and_rate_zero_means_no_limit() {
        let l = RateLimiter::new(Some(&limit(2, 0)), 0).unwrap();
        assert_eq!(l.take(0), Ok(()));
        assert_eq!(l.take(0), Ok(()));
        assert_eq!(l.take(0), Err(500));
        assert!(RateLimiter::new(Some(&limit(0, 10)), 0).is_none());
        assert!(RateLimiter::new(None, 0).is_none());
    }

    #[test]
    fn a_clock_reading_from_before_the_last_does_not_refill() {
        let l = RateLimiter::new(Some(&limit(1, 1)), 5_000).unwrap();
        assert_eq!(l.take(5_000), Ok(()));
        assert_eq!(l.take(4_000), Err(1_000));
    }
}
