//! The threads guest code runs on: a tokio runtime of their own, one thread per lane, at
//! a lower scheduling priority than the rest of the process.
//!
//! Guests used to run on the same tokio workers as the HTTP server, the probes and the
//! scheduler. On two cores, two spinning guests took `/healthz` from under 1 ms to
//! 50–690 ms and an execute request to 0.88 s: a guest yields to tokio only every slice
//! of fuel, and every other task waits behind it for its whole slice. On threads of
//! their own, the kernel shares the cores instead, and at a nice value of
//! [`GUEST_NICENESS`] it gives the process's other threads the CPU first whenever both
//! want it (each nice step is a factor of about 1.25 in CFS's weights: +10 is about a
//! tenth of the share), while the guests still take every cycle nobody else wants.
//!
//! Nothing here knows what a guest is: callers hand futures over with [`GuestThreads::run`]
//! (which hops only when called from elsewhere) or [`GuestThreads::handle`].

use std::cell::Cell;
use std::future::Future;

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;

/// How much lower guest threads are scheduled than the process's other threads.
pub(crate) const GUEST_NICENESS: i32 = 10;

thread_local! {
    static ON_GUEST_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// The guest threads of one runtime; stopped, without waiting, when dropped.
pub(crate) struct GuestThreads {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for GuestThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestThreads").finish_non_exhaustive()
    }
}

impl GuestThreads {
    /// Starts `count` threads (at least one).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(count.max(1))
            .thread_name("runcell-guest")
            .enable_all()
            .on_thread_start(|| {
                ON_GUEST_THREAD.with(|on| on.set(true));
                lower_priority();
            })
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Where to spawn work that runs guest code, so it starts on a guest thread.
    pub(crate) fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the guest runtime lives until dropped")
            .handle()
    }

    /// Runs `work` on a guest thread and waits for it; at once when already on one. If
    /// the caller stops waiting (a client hung up), the work is stopped too, as it would
    /// have been had it run in the caller's task.
    pub(crate) async fn run<F>(&self, work: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if ON_GUEST_THREAD.with(Cell::get) {
            return Ok(work.await);
        }
        AbortOnDrop(self.handle().spawn(work)).await
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its threads end, which tokio forbids inside
        // another runtime (where the last clone of a `Runtime` is often dropped).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A spawned task that is aborted when whoever awaits it goes away.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowers the calling thread's scheduling priority by [`GUEST_NICENESS`]. On Linux a
/// nice value belongs to a thread (`setpriority` with a thread id); elsewhere this
/// would lower the whole process, so it is left alone there. Failure only costs the
/// API its head start, so it is logged, not fatal.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        let current = rustix::process::getpriority_process(Some(thread)).unwrap_or(0);
        if let Err(err) =
            rustix::process::setpriority_process(Some(thread), current + GUEST_NICENESS)
        {
            tracing::warn!(error = %err, "could not lower a guest thread's priority");
        }
    }
}

/// Whether the calling thread is a guest thread.
#[cfg(test)]
pub(crate) fn on_guest_thread() -> bool {
    ON_GUEST_THREAD.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_guest_thread_at_a_lower_priority_and_stops_when_abandoned() {
        let guests = GuestThreads::start(1).unwrap();
        let (on_guest, niceness) = guests
            .run(async {
                let thread = rustix::thread::gettid();
                (
                    on_guest_thread(),
                    rustix::process::getpriority_process(Some(thread)).unwrap(),
                )
            })
            .await
            .unwrap();
        assert!(on_guest);
        assert!(!on_guest_thread(), "the caller's thread is not one");
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(niceness, own + GUEST_NICENESS);

        // A run whose caller stops waiting is stopped.
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        struct Signal(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Signal {
            fn drop(&mut self) {
                let _ = self.0.take().map(|tx| tx.send(()));
            }
        }
        let waiting = guests.run(async move {
            let _signal = Signal(Some(dropped_tx));
            std::future::pending::<()>().await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), waiting).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), dropped_rx)
            .await
            .expect("the abandoned work was stopped")
            .unwrap();
    }
}
