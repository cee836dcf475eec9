//! Per-target rate limiting: requests spaced evenly at the configured rate.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Spaces requests evenly at the configured rate (a token bucket holding one
/// token): a request may start `interval` after the previous one.
pub(super) struct RateLimiter {
    interval: Duration,
    /// When the next request may start.
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Reserves the next slot and waits for it.
    pub(super) async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(Duration::from_millis(100));
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first goes at once, the next four 100 ms apart.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }
}
