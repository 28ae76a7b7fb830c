//! When a failed execution is tried again: the backoff every trigger's retries share,
//! whichever part of a node (the worker, the reconciler) decides on the retry.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter between the attempts of one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Delay after the first failed attempt; each later attempt doubles it.
    pub base_delay: Duration,
    /// The longest any delay grows to.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// When attempt `attempt` failed, how long to wait before the next one. The ±20 %
    /// jitter keeps executions that failed together (a dependency went down) from all
    /// coming back in the same instant.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let base = self.base_delay.saturating_mul(1 << exponent);
        let capped = base.min(self.max_delay);
        let jitter = rand::rng().random_range(0.8..1.2);
        capped.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_and_are_capped() {
        let policy = RetryPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        };
        for (attempt, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (5, 10.0),
            (30, 10.0),
        ] {
            let delay = policy.delay(attempt).as_secs_f64();
            assert!(
                delay >= base * 0.8 && delay <= base * 1.2,
                "attempt {attempt}: {delay}"
            );
        }
    }
}
