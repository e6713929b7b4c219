//! The one retry policy of Ravel: exponential backoff with a cap, bounded by
//! a deadline (or unbounded, for messages that must eventually arrive).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::TransportError;

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
    /// The pause before attempt `n` (0-based).
    pub fn pause(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Calls `f` until it succeeds, fails with a non-retryable error, or
/// `deadline` passes (then the last error is returned). `None` retries
/// forever.
pub async fn retry<T, F, Fut>(
    backoff: &Backoff,
    deadline: Option<Instant>,
    mut f: F,
) -> Result<T, TransportError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, TransportError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                let pause = backoff.pause(attempt);
                if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                    return Err(e);
                }
                tracing::debug!(error = %e, attempt, ?pause, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_cap() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let got: Vec<u128> = (0..6).map(|a| b.pause(a).as_millis()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.pause(1000), Duration::from_millis(100));
    }

    fn quick() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        }
    }

    #[tokio::test]
    async fn retries_until_deadline_then_returns_last_error() {
        let mut calls = 0;
        let deadline = Instant::now() + Duration::from_millis(100);
        let res: Result<(), _> = retry(&quick(), Some(deadline), || {
            calls += 1;
            async {
                Err(TransportError::Unavailable {
                    addr: "x".into(),
                    message: "down".into(),
                })
            }
        })
        .await;
        assert!(matches!(res, Err(TransportError::Unavailable { .. })));
        assert!(calls > 3, "only {calls} attempts");
        assert!(Instant::now() <= deadline);
    }

    #[tokio::test]
    async fn non_retryable_error_stops_at_once() {
        let mut calls = 0;
        let res: Result<(), _> = retry(&quick(), None, || {
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
}
