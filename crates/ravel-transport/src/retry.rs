//! The one retry policy of Ravel: exponential backoff with jitter, capped,
//! bounded by a deadline and stopped by a cancel signal.
//!
//! Two shapes of the same policy: [`retry`] calls a fallible operation until
//! it succeeds, fails for good or runs out of time; [`Attempts`] paces a
//! loop that does more between attempts (leader discovery, re-planning).
//! Jitter spreads the retries of many callers (every replica of a cluster
//! telling the admin about a new leader, every admin request after a
//! failover) so they do not arrive in lockstep.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::TransportError;

/// Pauses between attempts: `initial`, doubling up to `max`, each drawn
/// uniformly from its upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    /// The longest pause before attempt `n` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The pause before attempt `n`: uniform in `[ceiling/2, ceiling]`.
    pub fn pause(&self, attempt: u32) -> Duration {
        let hi = self.ceiling(attempt);
        let lo = hi / 2;
        if hi <= lo {
            return hi;
        }
        rand::rng().random_range(lo..=hi)
    }
}

/// Errors that say whether trying again may help.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

impl Retryable for TransportError {
    fn is_retryable(&self) -> bool {
        TransportError::is_retryable(self)
    }
}

/// Paces the attempts of one operation.
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
}

impl Attempts {
    /// Attempts until `deadline` (`None`: no deadline).
    pub fn new(backoff: Backoff, deadline: Option<Instant>) -> Self {
        Self {
            backoff,
            attempt: 0,
            deadline,
            cancel: None,
        }
    }

    /// Attempts until `deadline` with the default backoff.
    pub fn until(deadline: Instant) -> Self {
        Self::new(Backoff::default(), Some(deadline))
    }

    /// Attempts without a deadline (until cancelled) with the default backoff.
    pub fn forever() -> Self {
        Self::new(Backoff::default(), None)
    }

    /// Stops pausing (and so retrying) once `cancel` is cancelled.
    pub fn cancel_on(mut self, cancel: CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Attempts made so far (pauses taken).
    pub fn count(&self) -> u32 {
        self.attempt
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Sleeps before the next attempt. Returns `false`, without sleeping,
    /// when the deadline would pass during the pause, and early when
    /// cancelled.
    pub async fn pause(&mut self) -> bool {
        if self.is_cancelled() {
            return false;
        }
        let pause = self.backoff.pause(self.attempt);
        if self.deadline.is_some_and(|d| Instant::now() + pause >= d) {
            return false;
        }
        self.attempt += 1;
        match &self.cancel {
            Some(c) => tokio::select! {
                _ = tokio::time::sleep(pause) => true,
                _ = c.cancelled() => false,
            },
            None => {
                tokio::time::sleep(pause).await;
                true
            }
        }
    }
}

/// Calls `f` until it succeeds, fails with an error that is not
/// retryable, or `attempts` runs out (deadline or cancel); then the last
/// error is returned.
pub async fn retry<T, E, F, Fut>(mut attempts: Attempts, mut f: F) -> Result<T, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, attempt = attempts.count(), "retrying");
                if !attempts.pause().await {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_cap_and_jitter_within_the_upper_half() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let got: Vec<u128> = (0..6).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(1000), Duration::from_millis(100));
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = b.pause(3);
            assert!(
                p >= Duration::from_millis(40) && p <= Duration::from_millis(80),
                "{p:?}"
            );
            distinct.insert(p);
        }
        assert!(distinct.len() > 10, "no jitter: {distinct:?}");
    }

    fn quick(deadline: Option<Instant>) -> Attempts {
        Attempts::new(
            Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
            },
            deadline,
        )
    }

    fn unavailable() -> TransportError {
        TransportError::Unavailable {
            addr: "x".into(),
            message: "down".into(),
        }
    }

    #[tokio::test]
    async fn retries_until_deadline_then_returns_last_error() {
        let mut calls = 0;
        let deadline = Instant::now() + Duration::from_millis(100);
        let res: Result<(), _> = retry(quick(Some(deadline)), || {
            calls += 1;
            async { Err(unavailable()) }
        })
        .await;
        assert!(matches!(res, Err(TransportError::Unavailable { .. })));
        assert!(calls > 3, "only {calls} attempts");
        // No pause is started that would end past the deadline; a sleep
        // may still wake a timer tick late.
        assert!(Instant::now() <= deadline + Duration::from_millis(20));
    }

    #[tokio::test]
    async fn non_retryable_error_stops_at_once() {
        let mut calls = 0;
        let res: Result<(), _> = retry(quick(None), || {
            calls += 1;
            async {
                Err(TransportError::Status {
                    addr: "x".into(),
                    code: tonic::Code::InvalidArgument,
                    message: "bad".into(),
                })
            }
        })
        .await;
        assert!(res.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn cancel_stops_an_unbounded_retry() {
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c2.cancel();
        });
        let started = Instant::now();
        let res: Result<(), _> = retry(quick(None).cancel_on(cancel), || async {
            Err(unavailable())
        })
        .await;
        assert!(res.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
