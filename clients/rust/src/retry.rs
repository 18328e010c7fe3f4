//! When and how long to wait before sending a call again: exponential
//! backoff with full jitter, never shorter than the gateway's `RetryInfo`,
//! and the rule for which calls may be resent at all.

use std::time::Duration;

use rand::Rng;

use crate::error::RpcError;

/// The longest `RetryInfo` delay honoured.
const ASKED_MAX: Duration = Duration::from_secs(30);

/// How a client retries a call that failed with `UNAVAILABLE` or
/// `RESOURCE_EXHAUSTED`.
///
/// The wait before attempt *n* is a random duration between zero and
/// `min(max_backoff, initial_backoff × 2ⁿ)` ("full jitter", so clients that
/// failed together do not come back together), and at least the delay the
/// gateway asked for in `RetryInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 never retries.
    pub max_attempts: u32,
    /// The backoff ceiling of the first retry.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Ten attempts over roughly ten seconds at most: enough to ride out a
    /// gateway restart or a replica leaving a load balancer.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    pub(crate) fn start(&self) -> Backoff {
        Backoff {
            policy: *self,
            attempt: 1,
        }
    }
}

/// Whether resending a call can apply it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// A read, or a write that carries an idempotency token the gateway
    /// deduplicates on: resent on any transient error.
    Safe,
    /// A write the gateway cannot deduplicate (Queue and PubSub Publish):
    /// resent only when the gateway refused it before doing anything
    /// (`RESOURCE_EXHAUSTED`) or it never reached the gateway.
    OnlyIfNotApplied,
}

impl Resend {
    pub(crate) fn allows(self, e: &RpcError) -> bool {
        match self {
            Resend::Safe => e.is_transient() || e.not_sent,
            Resend::OnlyIfNotApplied => {
                e.not_sent
                    || e.code == tonic::Code::ResourceExhausted
                        && e.reason.is_some()
                        && e.is_transient()
            }
        }
    }
}

/// The attempts of one logical call.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    /// Attempts made so far.
    attempt: u32,
}

impl Backoff {
    /// How long to wait before the next attempt, or `None` when the
    /// attempts are spent.
    pub(crate) fn next(&mut self, asked: Option<Duration>) -> Option<Duration> {
        if self.attempt >= self.policy.max_attempts {
            return None;
        }
        let ceiling = self
            .policy
            .initial_backoff
            .saturating_mul(1u32 << (self.attempt - 1).min(20))
            .min(self.policy.max_backoff);
        self.attempt += 1;
        let jittered = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
        // What the gateway asks is honoured up to a bound, so one odd
        // answer cannot stall a call for hours.
        let asked = asked.unwrap_or_default().min(ASKED_MAX);
        Some(jittered.max(asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn error(code: Code, reason: Option<&str>, not_sent: bool) -> RpcError {
        RpcError {
            code,
            message: String::new(),
            reason: reason.map(str::to_string),
            domain: None,
            metadata: Default::default(),
            retry_after: None,
            not_sent,
        }
    }

    #[test]
    fn backoff_grows_to_its_ceiling_honours_retry_info_and_ends() {
        let policy = RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        };
        let mut b = policy.start();
        for ceiling in [100, 200, 400, 400] {
            let wait = b.next(None).expect("attempts left");
            assert!(
                wait <= Duration::from_millis(ceiling),
                "{wait:?} > {ceiling} ms"
            );
        }
        assert_eq!(
            b.next(Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(b.next(None), None, "six attempts in all");
        assert_eq!(RetryPolicy::none().start().next(None), None);
    }

    #[test]
    fn unsafe_writes_are_resent_only_when_not_applied() {
        let unavailable = error(Code::Unavailable, Some("BACKEND_UNAVAILABLE"), false);
        let limited = error(Code::ResourceExhausted, Some("RATE_LIMITED"), false);
        let refused = error(Code::Unavailable, None, true);
        let invalid = error(Code::InvalidArgument, Some("INVALID_KEY"), false);
        assert!(Resend::Safe.allows(&unavailable));
        assert!(Resend::Safe.allows(&limited));
        assert!(!Resend::Safe.allows(&invalid));
        assert!(!Resend::OnlyIfNotApplied.allows(&unavailable));
        assert!(Resend::OnlyIfNotApplied.allows(&limited));
        assert!(Resend::OnlyIfNotApplied.allows(&refused));
        assert!(!Resend::OnlyIfNotApplied.allows(&invalid));
    }
}
