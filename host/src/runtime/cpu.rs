//! The CPU time the host spends on one execution, read from the thread's CPU clock around
//! each poll of the run's future. A poll runs on one thread from start to end (the guest's
//! fiber included), so the sum over polls is what the run cost this process's threads,
//! wherever tokio moved it between polls. Work the run hands to other tasks (an outbound
//! request's connection, a backend's own threads) is not counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// CPU time the calling thread has used so far.
pub(super) fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Adds up the thread CPU time of every poll of the futures it wraps.
#[derive(Debug, Default)]
pub(crate) struct CpuMeter {
    nanos: AtomicU64,
}

impl CpuMeter {
    /// `future`, its polls counted by this meter.
    pub(crate) fn meter<'a, F: Future>(&'a self, future: Pin<&'a mut F>) -> Metered<'a, F> {
        Metered {
            future,
            meter: self,
        }
    }

    /// The CPU time counted so far.
    pub(crate) fn spent(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// A future whose polls a [`CpuMeter`] counts.
#[derive(Debug)]
pub(crate) struct Metered<'a, F> {
    future: Pin<&'a mut F>,
    meter: &'a CpuMeter,
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_cpu_time();
        let result = self.future.as_mut().poll(cx);
        let spent = thread_cpu_time().saturating_sub(started);
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.meter.nanos.fetch_add(nanos, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_done_inside_a_poll_is_counted_and_waiting_is_not() {
        let meter = CpuMeter::default();
        let busy = std::pin::pin!(async {
            // Spin until this thread has had 30 ms of CPU, however loaded the machine.
            let started = thread_cpu_time();
            let mut x = 0_u64;
            while thread_cpu_time() - started < Duration::from_millis(30) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        meter.meter(busy).await;
        let spent = meter.spent();
        // 30 ms of spinning, not the 130 ms or more of wall time.
        assert!(spent >= Duration::from_millis(30), "{spent:?}");
        assert!(spent < Duration::from_millis(100), "{spent:?}");
    }
}
