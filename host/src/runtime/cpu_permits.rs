//! CPU permits: how many guests execute wasm at once, apart from how many runs are in
//! flight.
//!
//! A run in flight that waits on the network holds a worker slot but no CPU, so a node
//! keeps many runs in flight (see `default_workers` in `app`). Were they all free to run
//! wasm at once, a storm of CPU-bound guests would share the cores among hundreds: each
//! would take hundreds of times its CPU time in wall time, and all of them would run into
//! their time limits together. So a guest's code runs only while the run holds one of a
//! few permits, one per core by default:
//!
//! - it takes one before its first instruction (instantiation included) and gives it back
//!   when it returns;
//! - it gives it back whenever it waits on the host (an outbound request, a backend, a
//!   timer: whatever left its future pending without waking it) and takes one again
//!   before going back to wasm;
//! - it keeps it across the yields that fuel and epochs make it take (those wake the run
//!   at once), but once it has used [`QUANTUM`] of CPU on one permit, it gives the permit
//!   to a run that waits for one, if any, and queues behind it. Short runs run to the
//!   end, as fast as alone; long ones take turns with everything else.
//!
//! Runs wait for permits first come, first served. Time spent waiting for one does not
//! count against a run's wall-clock limit (the [`RunClock`] stops): the limit is there to
//! stop a guest that computes or waits too long of its own doing, and a wait for a CPU is
//! the node's doing, like the wait in the queue before a run is claimed, which never
//! counted either. Counted, N CPU-bound runs on C permits would each take about N / C
//! times their CPU time in wall time and time out together, however little each needed.
//! Uncounted, the wait is still bounded: every permit comes free within a quantum of CPU
//! when someone waits, so a run waits at most about (runs ahead of it / permits) quanta.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{AcquireError, Semaphore, SemaphorePermit};

use super::clock::RunClock;
use super::cpu::{CpuMeter, Metered};

/// The CPU time a guest may use on one permit while another run waits for one. Long
/// enough that the hand-over (another guest's memory into the core's caches) costs well
/// under 1 % of it, short enough that a run arriving behind a hundred CPU-bound ones on
/// two cores starts within about half a second.
pub(crate) const QUANTUM: Duration = Duration::from_millis(10);

/// How many permits a runtime gets by default: one per core.
pub(crate) fn default_cpu_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The permits of one runtime.
#[derive(Debug)]
pub(crate) struct CpuPermits {
    semaphore: Semaphore,
    total: usize,
}

impl CpuPermits {
    /// `count` permits (at least one).
    pub(crate) fn new(count: usize) -> Self {
        let total = count.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Semaphore::new(total),
            total,
        }
    }

    /// The permits there are.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Runs holding a permit now.
    pub(crate) fn in_use(&self) -> usize {
        self.total - self.semaphore.available_permits()
    }

    /// `run`, polled only while it holds a permit, its CPU counted by `meter`, `clock`
    /// stopped while it waits for a permit.
    pub(crate) fn run<'a, F: Future>(
        &'a self,
        clock: &'a RunClock,
        meter: &'a CpuMeter,
        run: Pin<&'a mut F>,
    ) -> OnCpu<'a, F> {
        let signal = Arc::new(Signal::default());
        OnCpu {
            permits: self,
            clock,
            meter,
            run: meter.meter(run),
            held: None,
            waiting: None,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

/// Whether a run's future woke itself during a poll (a yield: it is ready to go on) and
/// the waker of the task that polls it, woken in turn.
#[derive(Debug, Default)]
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A permit held, and the run's CPU time when it was taken.
#[derive(Debug)]
struct Held<'a> {
    _permit: SemaphorePermit<'a>,
    cpu_before: Duration,
}

type Acquire<'a> =
    Pin<Box<dyn Future<Output = Result<SemaphorePermit<'a>, AcquireError>> + Send + 'a>>;

/// A run that executes only while it holds a CPU permit; see [`CpuPermits::run`].
pub(crate) struct OnCpu<'a, F> {
    permits: &'a CpuPermits,
    clock: &'a RunClock,
    meter: &'a CpuMeter,
    run: Metered<'a, F>,
    held: Option<Held<'a>>,
    /// The wait for a permit, while there is one.
    waiting: Option<Acquire<'a>>,
    signal: Arc<Signal>,
    /// Wakes through `signal`: what the run's future is polled with.
    waker: Waker,
}

impl<F> std::fmt::Debug for OnCpu<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnCpu")
            .field("held", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, F> OnCpu<'a, F> {
    fn hold(&mut self, permit: SemaphorePermit<'a>) {
        self.held = Some(Held {
            _permit: permit,
            cpu_before: self.meter.spent(),
        });
    }

    /// Ready once the run holds a permit; the clock stops while it waits.
    fn take_permit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiting.is_none() {
            // Never ahead of a run already waiting: permits given back go to the waiting
            // runs first, so none is free while one waits.
            if let Ok(permit) = self.permits.semaphore.try_acquire() {
                self.hold(permit);
                return Poll::Ready(());
            }
            self.clock.pause();
            self.waiting = Some(Box::pin(self.permits.semaphore.acquire()));
        }
        let waiting = self.waiting.as_mut().expect("set above");
        let permit = ready!(waiting.as_mut().poll(cx)).expect("the permits are never closed");
        self.waiting = None;
        self.clock.resume();
        self.hold(permit);
        Poll::Ready(())
    }

    /// Gives the permit to a run that waits for one, if any; otherwise keeps going on a
    /// fresh quantum.
    fn give_way(&mut self) {
        self.held = None;
        if let Ok(permit) = self.permits.semaphore.try_acquire() {
            self.hold(permit);
        }
    }
}

impl<F: Future> Future for OnCpu<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if this.held.is_none() {
            ready!(this.take_permit(cx));
        }
        this.signal.task.register(cx.waker());
        this.signal.woken.store(false, Ordering::Relaxed);
        let polled = Pin::new(&mut this.run).poll(&mut Context::from_waker(&this.waker));
        let Poll::Pending = polled else {
            this.held = None;
            return polled;
        };
        if !this.signal.woken.load(Ordering::Acquire) {
            // Waiting on the host: someone else may have the CPU meanwhile.
            this.held = None;
        } else if let Some(held) = &this.held
            && this.meter.spent().saturating_sub(held.cpu_before) >= QUANTUM
        {
            this.give_way();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::super::cpu::thread_cpu_time;
    use super::*;

    /// What wasmtime does when fuel or an epoch makes a guest yield: wake, then pend.
    async fn yield_like_a_guest() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }

    /// Spins until this thread has used `cpu` more CPU time.
    fn burn(cpu: Duration) {
        let started = thread_cpu_time();
        while thread_cpu_time().saturating_sub(started) < cpu {
            std::hint::black_box((0..1_000_u64).sum::<u64>());
        }
    }

    /// Runs `work` under `permits` on the current task, with a clock of its own.
    async fn on_cpu<T>(permits: &CpuPermits, work: impl Future<Output = T>) -> (T, Duration) {
        let clock = RunClock::start(Duration::from_secs(60));
        let meter = CpuMeter::default();
        let work = std::pin::pin!(work);
        let out = permits.run(&clock, &meter, work).await;
        (out, clock.waited())
    }

    #[tokio::test]
    async fn a_run_gives_its_permit_up_while_it_waits_on_the_host() {
        let permits = Arc::new(CpuPermits::new(1));
        let (answer, answered) = tokio::sync::oneshot::channel::<u32>();
        let asked = Arc::new(AtomicBool::new(false));
        let waiting = tokio::spawn({
            let (permits, asked) = (permits.clone(), asked.clone());
            async move {
                let work = async {
                    asked.store(true, Ordering::SeqCst);
                    answered.await.unwrap()
                };
                on_cpu(&permits, work).await.0
            }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while !asked.load(Ordering::SeqCst) || permits.in_use() != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the run asked the host");
        // The only permit is free: another run goes through while the first waits.
        let (other, waited) =
            tokio::time::timeout(Duration::from_secs(5), on_cpu(&permits, async { 2 }))
                .await
                .expect("the permit was given up");
        assert_eq!(other, 2);
        assert_eq!(waited, Duration::ZERO);
        answer.send(1).unwrap();
        assert_eq!(waiting.await.unwrap(), 1);
        assert_eq!(permits.in_use(), 0);
    }

    #[tokio::test]
    async fn a_run_keeps_its_permit_across_its_yields_within_a_quantum() {
        let permits = CpuPermits::new(1);
        let order = Mutex::new(Vec::new());
        let first = on_cpu(&permits, async {
            for _ in 0..20 {
                yield_like_a_guest().await;
            }
            order.lock().unwrap().push("first");
        });
        let second = on_cpu(&permits, async {
            order.lock().unwrap().push("second");
        });
        let ((_, first_waited), (_, second_waited)) = tokio::join!(first, second);
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
        assert_eq!(first_waited, Duration::ZERO);
        assert!(second_waited > Duration::ZERO);
    }

    #[tokio::test]
    async fn past_its_quantum_a_yielding_run_gives_way_to_a_waiting_one() {
        let permits = CpuPermits::new(1);
        let second_ran = AtomicBool::new(false);
        let yields_after_second = AtomicUsize::new(0);
        let first = on_cpu(&permits, async {
            // Bounded, in case the permit is never handed over.
            for _ in 0..500 {
                burn(QUANTUM / 4);
                yield_like_a_guest().await;
                if second_ran.load(Ordering::SeqCst) {
                    yields_after_second.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        });
        let second = async {
            // Queued once the first holds the permit.
            tokio::task::yield_now().await;
            on_cpu(&permits, async { second_ran.store(true, Ordering::SeqCst) }).await
        };
        tokio::join!(first, second);
        assert_eq!(yields_after_second.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_wait_for_a_permit_stops_the_run_clock() {
        let permits = CpuPermits::new(1);
        let taken = permits.semaphore.try_acquire().unwrap();
        let clock = RunClock::start(Duration::from_millis(50));
        let meter = CpuMeter::default();
        let deadline_before = clock.deadline();
        let run = std::pin::pin!(async { clock.passed() });
        let mut run = permits.run(&clock, &meter, run);
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut run).poll(cx))).await;
        assert!(first.is_pending(), "the only permit is taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(taken);
        let passed = run.await;
        assert!(
            !passed,
            "100 ms waiting for a CPU did not use up a 50 ms limit"
        );
        assert!(clock.waited() >= Duration::from_millis(100));
        assert!(clock.deadline() >= deadline_before + Duration::from_millis(100));
    }

    /// Many runs on a few permits and more threads: never more than the permits between
    /// a run's start or return from the host and its next wait on the host.
    #[test]
    fn runs_on_the_cpu_never_outnumber_the_permits() {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let permits = Arc::new(CpuPermits::new(2));
        let on_cpu_now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        tokio.block_on(async {
            let runs: Vec<_> = (0..24)
                .map(|_| {
                    let (permits, now, most) = (permits.clone(), on_cpu_now.clone(), most.clone());
                    tokio::spawn(async move {
                        on_cpu(&permits, async {
                            for _ in 0..3 {
                                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(running, Ordering::SeqCst);
                                for _ in 0..3 {
                                    burn(Duration::from_micros(300));
                                    yield_like_a_guest().await;
                                }
                                now.fetch_sub(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        })
                        .await
                    })
                })
                .collect();
            for run in runs {
                run.await.unwrap();
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} on the CPU at once");
        assert_eq!(permits.in_use(), 0);
    }
}
