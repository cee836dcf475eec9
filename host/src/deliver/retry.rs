//! When to try a failed delivery again, and when to give up.
//!
//! A [`RetryPolicy`] is the `retry_policy` of a rule. The delivery engine asks
//! [`RetryPolicy::check`] whether another attempt is allowed and
//! [`RetryPolicy::next_delay`] how long to wait before it, or simply
//! [`RetryPolicy::after`] what to do next. Backoff is
//! exponential with *full jitter* (a uniform draw between zero and the
//! exponential cap), which spreads the retries of many events that failed
//! together instead of bringing them back in synchronised waves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::SpecError;
use super::{Outcome, Problems};

/// A rule's retry policy: how long and how often to retry a delivery.
///
/// The defaults follow EventBridge (185 attempts, 24 hours) and are tuned so
/// that both limits bind at about the same time: with full jitter the mean
/// wait is half the cap, so after the ten doubling steps from 1 s to the
/// 15-minute cap, 175 more attempts average 7.5 minutes apart, and 185
/// attempts span about 22 hours (see the `defaults_spread_attempts_over_a_day`
/// test).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 disables retries).
    pub max_attempts: u32,
    /// Give up once the event is this old (seconds since it was accepted).
    pub max_event_age_s: u64,
    /// The backoff cap of the first retry; it doubles with every attempt.
    ///
    /// One second: quick enough that a blip (a restarted receiver, one 503)
    /// costs little latency, slow enough not to hammer a receiver that is
    /// already failing.
    pub base_delay_ms: u64,
    /// The largest backoff cap.
    pub max_delay_ms: u64,
    /// The longest `Retry-After` honoured; a target asking for more is
    /// retried after this long (protects against hostile or broken values).
    pub max_retry_after_s: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 185,
            max_event_age_s: 86_400,
            base_delay_ms: 1_000,
            max_delay_ms: 900_000,
            max_retry_after_s: 300,
        }
    }
}

/// Upper bounds that keep a policy meaningful (and its arithmetic far from
/// overflow).
const MAX_ATTEMPTS_LIMIT: u32 = 10_000;
const MAX_EVENT_AGE_LIMIT_S: u64 = 30 * 86_400;
const MAX_DELAY_LIMIT_MS: u64 = 86_400_000;

/// Which limit ended the retries of a delivery (the dead-letter entry's
/// `exhausted` field); the store keeps it.
pub use crate::store::Exhausted;

/// What the delivery engine should do after an attempt (see
/// [`RetryPolicy::after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The event was delivered; nothing more to do.
    Done,
    /// Attempt again after this delay.
    RetryIn(Duration),
    /// Dead-letter the event: this limit ran out.
    GiveUp(Exhausted),
}

impl RetryPolicy {
    /// Decides what follows an attempt's `outcome`, given the attempts made
    /// so far (this one included) and the event's age now.
    ///
    /// Combines [`check`](Self::check) and [`next_delay`](Self::next_delay),
    /// and gives up early when the next attempt would fall after
    /// `max_event_age_s` anyway.
    pub fn after(&self, outcome: &Outcome, attempts_made: u32, event_age: Duration) -> Next {
        self.after_with(outcome, attempts_made, event_age, &mut fastrand::Rng::new())
    }

    /// [`after`](Self::after) drawing the jitter from `rng`.
    pub fn after_with(
        &self,
        outcome: &Outcome,
        attempts_made: u32,
        event_age: Duration,
        rng: &mut fastrand::Rng,
    ) -> Next {
        let failure = match outcome {
            Outcome::Delivered { .. } => return Next::Done,
            Outcome::Permanent(_) => return Next::GiveUp(Exhausted::Permanent),
            Outcome::Retry(failure) => failure,
        };
        if let Err(exhausted) = self.check(attempts_made, event_age) {
            return Next::GiveUp(exhausted);
        }
        let delay = self.next_delay_with(attempts_made, failure.retry_after, rng);
        match self.check(attempts_made, event_age.saturating_add(delay)) {
            Ok(()) => Next::RetryIn(delay),
            Err(exhausted) => Next::GiveUp(exhausted),
        }
    }

    /// Checks that every field is in range; reports all problems.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            problems.add(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            );
        }
        if !(1..=MAX_EVENT_AGE_LIMIT_S).contains(&self.max_event_age_s) {
            problems.add(
                "max_event_age_s",
                format!("must be between 1 and {MAX_EVENT_AGE_LIMIT_S}"),
            );
        }
        if !(1..=MAX_DELAY_LIMIT_MS).contains(&self.base_delay_ms) {
            problems.add(
                "base_delay_ms",
                format!("must be between 1 and {MAX_DELAY_LIMIT_MS}"),
            );
        }
        if self.max_delay_ms > MAX_DELAY_LIMIT_MS {
            problems.add(
                "max_delay_ms",
                format!("must be at most {MAX_DELAY_LIMIT_MS}"),
            );
        } else if self.max_delay_ms < self.base_delay_ms {
            problems.add("max_delay_ms", "must be at least base_delay_ms");
        }
        if self.max_retry_after_s > MAX_EVENT_AGE_LIMIT_S {
            problems.add(
                "max_retry_after_s",
                format!("must be at most {MAX_EVENT_AGE_LIMIT_S}"),
            );
        }
        problems.finish()
    }

    /// How long to wait before the next attempt, after `attempts_made`
    /// attempts have failed.
    ///
    /// Exponential backoff with full jitter: uniform in
    /// `[0, min(max_delay, base * 2^(attempts_made - 1))]`. A `Retry-After`
    /// from the target is honoured as a lower bound, capped at
    /// `max_retry_after_s`.
    pub fn next_delay(&self, attempts_made: u32, retry_after: Option<Duration>) -> Duration {
        self.next_delay_with(attempts_made, retry_after, &mut fastrand::Rng::new())
    }

    /// [`next_delay`](Self::next_delay) drawing the jitter from `rng`, so that
    /// tests (and simulations) can seed it.
    pub fn next_delay_with(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let jittered = Duration::from_millis(rng.u64(0..=self.backoff_cap_ms(attempts_made)));
        match retry_after {
            Some(asked) => jittered.max(asked.min(Duration::from_secs(self.max_retry_after_s))),
            None => jittered,
        }
    }

    /// The jitter's upper bound after `attempts_made` failed attempts:
    /// `min(max_delay, base * 2^(attempts_made - 1))`, without overflow.
    pub fn backoff_cap_ms(&self, attempts_made: u32) -> u64 {
        let doublings = attempts_made.saturating_sub(1).min(63);
        self.base_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_delay_ms)
    }

    /// Whether another attempt is allowed after `attempts_made` attempts on an
    /// event that is `event_age` old; else which limit ran out (attempts are
    /// checked first).
    pub fn check(&self, attempts_made: u32, event_age: Duration) -> Result<(), Exhausted> {
        if attempts_made >= self.max_attempts {
            Err(Exhausted::MaxAttempts)
        } else if event_age >= Duration::from_secs(self.max_event_age_s) {
            Err(Exhausted::MaxEventAge)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::{Failure, FailureCode};

    fn policy(base_delay_ms: u64, max_delay_ms: u64) -> RetryPolicy {
        RetryPolicy {
            base_delay_ms,
            max_delay_ms,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn defaults_match_the_documented_values_and_validate() {
        let default = RetryPolicy::default();
        assert_eq!(default.max_attempts, 185);
        assert_eq!(default.max_event_age_s, 86_400);
        assert!(default.validate().is_ok());
        // An empty object, or one setting only some fields, takes the rest
        // from the defaults.
        let partial: RetryPolicy =
            serde_json::from_str(r#"{"max_attempts": 3, "max_event_age_s": 60}"#).unwrap();
        assert_eq!(partial.max_attempts, 3);
        assert_eq!(partial.base_delay_ms, default.base_delay_ms);
        let empty: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, default);
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max_tries": 3}"#).is_err());
    }

    #[test]
    fn defaults_spread_attempts_over_a_day() {
        // Expected total wait of 184 retries is the sum of half the caps.
        let p = RetryPolicy::default();
        let mean_total_ms: u64 = (1..p.max_attempts).map(|a| p.backoff_cap_ms(a) / 2).sum();
        let hours = mean_total_ms as f64 / 3_600_000.0;
        assert!((20.0..24.0).contains(&hours), "{hours} h");
    }

    #[test]
    fn validate_reports_every_problem() {
        let bad = RetryPolicy {
            max_attempts: 0,
            max_event_age_s: 0,
            base_delay_ms: 500,
            max_delay_ms: 100,
            max_retry_after_s: u64::MAX,
        };
        let err = bad.validate().unwrap_err();
        let fields: Vec<String> = err.problems().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "max_attempts",
                "max_event_age_s",
                "max_delay_ms",
                "max_retry_after_s"
            ]
        );
    }

    #[test]
    fn backoff_cap_doubles_then_saturates() {
        let p = policy(100, 60_000);
        let caps: Vec<u64> = (0..=12).map(|a| p.backoff_cap_ms(a)).collect();
        assert_eq!(
            caps,
            [
                100, 100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 51_200, 60_000, 60_000
            ]
        );
        // Far beyond 64 doublings nothing overflows.
        assert_eq!(p.backoff_cap_ms(u32::MAX), 60_000);
        assert_eq!(policy(u64::MAX / 2, u64::MAX).backoff_cap_ms(3), u64::MAX);
    }

    #[test]
    fn jitter_stays_within_bounds_and_covers_the_range() {
        let p = policy(100, 60_000);
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..=20 {
            let cap = Duration::from_millis(p.backoff_cap_ms(attempt));
            for _ in 0..200 {
                assert!(p.next_delay_with(attempt, None, &mut rng) <= cap);
            }
        }
        // Full jitter is uniform over [0, cap]: each tenth of the range gets
        // about a tenth of the draws, and the mean is about half the cap.
        let cap_ms = p.backoff_cap_ms(15) as f64;
        let draws = 20_000;
        let mut buckets = [0u32; 10];
        let mut sum = 0.0;
        for _ in 0..draws {
            let ms = p.next_delay_with(15, None, &mut rng).as_millis() as f64;
            sum += ms;
            buckets[((ms / cap_ms * 10.0) as usize).min(9)] += 1;
        }
        for count in buckets {
            assert!((1_700..2_300).contains(&count), "{buckets:?}");
        }
        let mean = sum / draws as f64;
        assert!((mean / cap_ms - 0.5).abs() < 0.02, "mean {mean}");
        // The same seed gives the same delays.
        let a: Vec<_> = (1..10)
            .map(|n| p.next_delay_with(n, None, &mut fastrand::Rng::with_seed(1)))
            .collect();
        let b: Vec<_> = (1..10)
            .map(|n| p.next_delay_with(n, None, &mut fastrand::Rng::with_seed(1)))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn retry_after_is_a_capped_lower_bound() {
        let p = RetryPolicy {
            max_retry_after_s: 300,
            ..policy(100, 60_000)
        };
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100 {
            // Above the jitter cap (100 ms): exactly what was asked.
            let d = p.next_delay_with(1, Some(Duration::from_secs(30)), &mut rng);
            assert_eq!(d, Duration::from_secs(30));
            // A huge Retry-After is capped.
            let d = p.next_delay_with(1, Some(Duration::from_secs(86_400)), &mut rng);
            assert_eq!(d, Duration::from_secs(300));
            // A small Retry-After does not shorten a longer backoff draw's cap.
            let d = p.next_delay_with(30, Some(Duration::from_millis(1)), &mut rng);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(60));
        }
    }

    #[test]
    fn check_reports_which_limit_ran_out() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_event_age_s: 60,
            ..RetryPolicy::default()
        };
        assert_eq!(p.check(1, Duration::from_secs(10)), Ok(()));
        assert_eq!(p.check(2, Duration::from_secs(59)), Ok(()));
        assert_eq!(
            p.check(3, Duration::from_secs(10)),
            Err(Exhausted::MaxAttempts)
        );
        assert_eq!(
            p.check(2, Duration::from_secs(60)),
            Err(Exhausted::MaxEventAge)
        );
        // Both exhausted: attempts win.
        assert_eq!(
            p.check(5, Duration::from_secs(600)),
            Err(Exhausted::MaxAttempts)
        );
        let names: Vec<&str> = [
            Exhausted::MaxAttempts,
            Exhausted::MaxEventAge,
            Exhausted::Permanent,
        ]
        .iter()
        .map(|e| e.as_str())
        .collect();
        assert_eq!(names, ["max_attempts", "max_event_age", "permanent"]);
        for e in [
            Exhausted::MaxAttempts,
            Exhausted::MaxEventAge,
            Exhausted::Permanent,
        ] {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
            assert_eq!(e.to_string(), e.as_str());
        }
    }

    #[test]
    fn after_combines_outcome_limits_and_backoff() {
        let p = RetryPolicy {
            max_attempts: 5,
            max_event_age_s: 3_600,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            max_retry_after_s: 300,
        };
        let mut rng = fastrand::Rng::with_seed(9);
        let retry = Outcome::Retry(Failure::new(FailureCode::HttpStatus, "HTTP 503"));
        let young = Duration::from_secs(10);

        assert_eq!(
            p.after_with(
                &Outcome::Delivered { status: Some(200) },
                1,
                young,
                &mut rng
            ),
            Next::Done
        );
        assert_eq!(
            p.after_with(
                &Outcome::Permanent(Failure::new(FailureCode::HttpStatus, "HTTP 404")),
                1,
                young,
                &mut rng
            ),
            Next::GiveUp(Exhausted::Permanent)
        );
        let Next::RetryIn(delay) = p.after_with(&retry, 2, young, &mut rng) else {
            panic!("a young event with attempts left is retried")
        };
        assert!(delay <= Duration::from_secs(2));
        assert_eq!(
            p.after_with(&retry, 5, young, &mut rng),
            Next::GiveUp(Exhausted::MaxAttempts)
        );
        assert_eq!(
            p.after_with(&retry, 1, Duration::from_secs(3_600), &mut rng),
            Next::GiveUp(Exhausted::MaxEventAge)
        );
        // A Retry-After that lands past the age limit ends the retries now.
        let mut asked = Failure::new(FailureCode::RateLimited, "HTTP 429");
        asked.retry_after = Some(Duration::from_secs(120));
        assert_eq!(
            p.after_with(
                &Outcome::Retry(asked.clone()),
                1,
                Duration::from_secs(3_500),
                &mut rng
            ),
            Next::GiveUp(Exhausted::MaxEventAge)
        );
        assert_eq!(
            p.after_with(&Outcome::Retry(asked), 1, young, &mut rng),
            Next::RetryIn(Duration::from_secs(120))
        );
    }
}
