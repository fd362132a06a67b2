//! Bounded retries with exponential backoff and full jitter.

use std::time::Duration;

/// How often and how patiently an operation is retried.
///
/// Delays grow exponentially from `base_delay` up to `max_delay`; with jitter each delay is drawn
/// uniformly from zero to that bound ("full jitter"), which spreads competing retries apart.
///
/// ```
/// # use eventsource_core::RetryPolicy;
/// # use std::time::Duration;
/// let policy = RetryPolicy::default()
///     .with_max_attempts(5)
///     .with_base_delay(Duration::from_millis(2))
///     .with_jitter(false);
/// assert_eq!(policy.delay(1), Duration::from_millis(2));
/// assert_eq!(policy.delay(3), Duration::from_millis(8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(200),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Never retry: one attempt.
    #[must_use]
    pub fn never() -> Self {
        Self::default().with_max_attempts(1)
    }

    /// Total attempts, the first included (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay bound before the first retry.
    #[must_use]
    pub fn with_base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// Largest delay bound.
    #[must_use]
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Whether delays are randomized.
    #[must_use]
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Total attempts allowed.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before retry number `retry` (1 for the first retry).
    #[must_use]
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        let bound = self.base_delay.saturating_mul(factor).min(self.max_delay);
        if self.jitter && !bound.is_zero() {
            bound.mul_f64(rand::random::<f64>())
        } else {
            bound
        }
    }
}
