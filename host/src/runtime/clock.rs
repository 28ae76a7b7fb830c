//! A run's wall clock: the deadline its time limit sets, stopped while the run waits for
//! a CPU (see [`super::cpu_permits`]). Everything that bounds a run by its time limit
//! reads the deadline here: the epoch callback that stops guest code, the timer around
//! the whole call, the timers around host calls and outbound requests.
//!
//! Only the run's own task pauses and resumes it; others read it too (an outbound request
//! is a task of its own), and may see a deadline a moment later than the true one, never
//! earlier.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `paused_at` when the clock runs.
const RUNNING: u64 = u64::MAX;

/// The deadline of one run: its start plus its time limit plus the time it spent
/// waiting for a CPU.
#[derive(Debug)]
pub(crate) struct RunClock {
    origin: Instant,
    limit: Duration,
    /// Nanoseconds after `origin` at which the current wait began, or [`RUNNING`].
    paused_at: AtomicU64,
    /// Nanoseconds spent in waits that are over.
    paused_for: AtomicU64,
}

impl RunClock {
    /// A clock started now, for a run limited to `limit`.
    pub(crate) fn start(limit: Duration) -> Self {
        Self {
            origin: Instant::now(),
            limit,
            paused_at: AtomicU64::new(RUNNING),
            paused_for: AtomicU64::new(0),
        }
    }

    /// The moment the run's time is up, as far as is known now: while it waits, the
    /// deadline moves with the clock on the wall.
    pub(crate) fn deadline(&self) -> Instant {
        // In this order, against `resume`'s: a reader that sees the wait over also sees
        // it added.
        let at = self.paused_at.load(Ordering::Acquire);
        let mut paused = self.paused_for.load(Ordering::Relaxed);
        if at != RUNNING {
            paused = paused.saturating_add(self.since_origin().saturating_sub(at));
        }
        self.origin + self.limit + Duration::from_nanos(paused)
    }

    /// Whether the run's time is up.
    pub(crate) fn passed(&self) -> bool {
        Instant::now() >= self.deadline()
    }

    /// Stops the clock: the run waits for a CPU.
    pub(crate) fn pause(&self) {
        let _ = self.paused_at.compare_exchange(
            RUNNING,
            self.since_origin(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Starts the clock again: the run has a CPU.
    pub(crate) fn resume(&self) {
        let at = self.paused_at.load(Ordering::Relaxed);
        if at == RUNNING {
            return;
        }
        let waited = self.since_origin().saturating_sub(at);
        self.paused_for.fetch_add(waited, Ordering::Relaxed);
        self.paused_at.store(RUNNING, Ordering::Release);
    }

    /// The time spent waiting for a CPU so far.
    #[cfg(test)]
    pub(crate) fn waited(&self) -> Duration {
        self.deadline() - self.origin - self.limit
    }

    /// Completes `grace` after the deadline. The deadline is read again whenever the
    /// timer fires, since waits since it was set have moved it.
    pub(crate) async fn expired(&self, grace: Duration) {
        loop {
            let due = self.deadline() + grace;
            tokio::time::sleep_until(due.into()).await;
            if Instant::now() >= self.deadline() + grace {
                return;
            }
        }
    }

    /// Runs `work`, but not past the deadline: `None` if the time ran out first.
    pub(crate) async fn bound<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            done = work => Some(done),
            () = self.expired(Duration::ZERO) => None,
        }
    }

    fn since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spent_waiting_moves_the_deadline_and_time_running_does_not() {
        let clock = RunClock::start(Duration::from_secs(10));
        let first = clock.deadline();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.deadline(), first, "running time counts");

        clock.pause();
        std::thread::sleep(Duration::from_millis(30));
        let during = clock.deadline();
        assert!(
            during >= first + Duration::from_millis(30),
            "a wait moves it"
        );
        clock.pause(); // a second pause does not restart the wait
        clock.resume();
        let after = clock.deadline();
        assert!(after >= during);
        assert!(clock.waited() >= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(clock.deadline(), after, "running again");
        clock.resume(); // resuming a running clock changes nothing
        assert_eq!(clock.deadline(), after);
    }

    #[tokio::test]
    async fn the_expiry_waits_out_the_time_spent_waiting() {
        let clock = std::sync::Arc::new(RunClock::start(Duration::from_millis(50)));
        clock.pause();
        let expiry = tokio::spawn({
            let clock = clock.clone();
            async move { clock.expired(Duration::ZERO).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !expiry.is_finished(),
            "still waiting for a CPU: not expired"
        );
        clock.resume();
        tokio::time::timeout(Duration::from_secs(5), expiry)
            .await
            .expect("expired once running again")
            .unwrap();
        assert!(clock.passed());
        let bounded = tokio::time::timeout(
            Duration::from_secs(5),
            clock.bound(std::future::pending::<()>()),
        );
        assert_eq!(bounded.await, Ok(None));
        assert_eq!(clock.bound(async { 7 }).await, Some(7), "work done in time");
    }
}
