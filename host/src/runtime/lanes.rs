//! Lanes: one wasm engine per worker thread, so runs on different cores share no engine
//! state.
//!
//! With one engine for the process, every run on every core writes the same memory: the
//! pooling allocator's slot index and instance counters, the reference counts of the
//! engine and of the compiled code, and the pooled slots themselves, which move from
//! core to core. Two threads then did 1.22× the runs of one. With an engine per thread
//! and each thread keeping to its own, they do what two processes would.
//!
//! A lane also has its own handles on what every run gets (the capability backends, the
//! outbound settings, each module's name), so taking one for a run counts a reference in
//! the lane's memory, not in memory every core writes.
//!
//! A thread's lane is fixed the first time it runs anything, so a tokio worker keeps one
//! lane for its life. Each lane's pool holds its share of the instances the runtime may
//! have alive; a run whose lane is full takes the next lane with room, so the total stays
//! what the operator configured.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::execution::ExecutionState;
use super::host::HostServices;
use super::host::http::OutboundSettings;

/// How many lanes a runtime gets by default: one per core a worker thread can run on.
pub(crate) fn default_lane_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One engine, the linker over it, the lane's handles on what runs get, and the runs it
/// has in flight. Aligned to its own cache lines: lanes sit side by side, and one core's
/// count must not share a line with the engine handle another core reads.
#[repr(align(128))]
pub(crate) struct Lane {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<ExecutionState>,
    pub(crate) services: Arc<HostServices>,
    pub(crate) outbound: Arc<OutboundSettings>,
    in_flight: AtomicU32,
    capacity: u32,
}

impl Lane {
    /// A lane holding up to `capacity` instances, with handles of its own on `services`
    /// and `outbound`.
    pub(crate) fn new(
        engine: Engine,
        linker: Linker<ExecutionState>,
        services: &HostServices,
        outbound: &OutboundSettings,
        capacity: u32,
    ) -> Self {
        Self {
            engine,
            linker,
            services: Arc::new(services.clone()),
            outbound: Arc::new(outbound.clone()),
            in_flight: AtomicU32::new(0),
            capacity,
        }
    }

    /// Instances alive in this lane now, and how many its pool holds.
    pub(crate) fn use_and_capacity(&self) -> (u32, u32) {
        (self.in_flight.load(Ordering::Relaxed), self.capacity)
    }

    fn try_enter(&self) -> bool {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) < self.capacity {
            return true;
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        false
    }
}

/// A run's place in a lane: the lane's index, given back when dropped.
pub(crate) struct LaneSeat<'a> {
    lanes: &'a [Lane],
    pub(crate) index: usize,
}

impl LaneSeat<'_> {
    pub(crate) fn lane(&self) -> &Lane {
        &self.lanes[self.index]
    }
}

impl Drop for LaneSeat<'_> {
    fn drop(&mut self) {
        self.lanes[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a seat for one run: in the calling thread's lane if it has room, else in the
/// next lane that has. If every lane is full the run goes to the thread's own lane, whose
/// pool then refuses the instance with wasmtime's own error, as one engine would.
pub(crate) fn take_seat(lanes: &[Lane]) -> LaneSeat<'_> {
    let home = thread_number() % lanes.len();
    let index = (0..lanes.len())
        .map(|offset| (home + offset) % lanes.len())
        .find(|&index| lanes[index].try_enter())
        .unwrap_or_else(|| {
            lanes[home].in_flight.fetch_add(1, Ordering::Relaxed);
            home
        });
    LaneSeat { lanes, index }
}

/// The instances each of `lanes` lanes may have alive for `total` in all.
pub(crate) fn lane_capacity(total: u32, lanes: usize) -> u32 {
    let lanes = u32::try_from(lanes.max(1)).unwrap_or(u32::MAX);
    total.max(1).div_ceil(lanes)
}

/// A number for the calling thread, given in the order threads first ask: the worker
/// threads of a runtime get consecutive numbers, so they spread over the lanes.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: Cell<Option<usize>> = const { Cell::new(None) };
    }
    NUMBER.with(|number| {
        number.get().unwrap_or_else(|| {
            let assigned = NEXT.fetch_add(1, Ordering::Relaxed);
            number.set(Some(assigned));
            assigned
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(count: usize, capacity: u32) -> Vec<Lane> {
        let engine = Engine::default();
        (0..count)
            .map(|_| {
                Lane::new(
                    engine.clone(),
                    Linker::new(&engine),
                    &HostServices::in_memory(),
                    &OutboundSettings::default(),
                    capacity,
                )
            })
            .collect()
    }

    #[test]
    fn a_thread_keeps_its_lane() {
        let lanes = lanes(4, 8);
        let first = take_seat(&lanes).index;
        for _ in 0..10 {
            assert_eq!(take_seat(&lanes).index, first);
        }
    }

    #[test]
    fn each_new_thread_gets_the_next_number() {
        let spawned = || std::thread::spawn(thread_number).join().unwrap();
        let (first, second) = (spawned(), spawned());
        // Other tests' threads may take numbers in between, never the same one.
        assert!(second > first, "{first} then {second}");
        assert_eq!(thread_number(), thread_number());
    }

    #[test]
    fn a_full_lane_sends_runs_to_the_next_one_with_room() {
        let lanes = lanes(3, 2);
        let seats: Vec<_> = (0..6).map(|_| take_seat(&lanes)).collect();
        let mut per_lane = [0; 3];
        for seat in &seats {
            per_lane[seat.index] += 1;
        }
        assert_eq!(per_lane, [2, 2, 2]);
        // All full: the seventh run stays home and leaves the refusal to the pool.
        let home = seats[0].index;
        assert_eq!(take_seat(&lanes).index, home);
        drop(seats);
        for lane in &lanes {
            assert_eq!(lane.in_flight.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn lane_capacities_add_up_to_at_least_the_total() {
        assert_eq!(lane_capacity(80, 2), 40);
        assert_eq!(lane_capacity(81, 2), 41);
        assert_eq!(lane_capacity(4, 8), 1);
        assert_eq!(lane_capacity(0, 0), 1);
    }
}
