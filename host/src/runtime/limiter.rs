//! Per-execution memory and table accounting. wasmtime asks before every growth; this
//! answers against the run's limit, remembers the peak for the usage record, and remembers
//! a refusal so a guest that aborts after a failed allocation is reported as having hit
//! its memory limit rather than as a mysterious trap.

/// A component built by today's toolchains instantiates a handful of core instances
/// (the guest, its adapter shims); this leaves room without letting a component fan out.
const MAX_INSTANCES: usize = 32;
const MAX_TABLES: usize = 32;
const MAX_MEMORIES: usize = 8;
/// Function tables of real guests hold a few thousand entries.
const MAX_TABLE_ELEMENTS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit_bytes: u64,
    current_bytes: u64,
    peak_bytes: u64,
    limit_hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit_bytes: u64) -> Self {
        Self {
            limit_bytes,
            current_bytes: 0,
            peak_bytes: 0,
            limit_hit: false,
        }
    }

    pub(crate) fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    pub(crate) fn limit_hit(&self) -> bool {
        self.limit_hit
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let total = self.current_bytes.saturating_add(growth);
        if total > self.limit_bytes {
            self.limit_hit = true;
            return Ok(false);
        }
        self.current_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn growth_within_the_limit_is_allowed_and_the_peak_kept() {
        let mut limiter = MemoryLimiter::new(4 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.memory_growing(1 << 20, 3 << 20, None).unwrap());
        assert_eq!(limiter.peak_bytes(), 3 << 20);
        assert!(!limiter.limit_hit());
    }

    #[test]
    fn growth_past_the_limit_is_refused_and_remembered() {
        let mut limiter = MemoryLimiter::new(4 << 20);
        assert!(limiter.memory_growing(0, 3 << 20, None).unwrap());
        assert!(!limiter.memory_growing(3 << 20, 5 << 20, None).unwrap());
        assert!(limiter.limit_hit());
        assert_eq!(limiter.peak_bytes(), 3 << 20);
    }

    #[test]
    fn memories_count_together_against_the_limit() {
        let mut limiter = MemoryLimiter::new(4 << 20);
        assert!(limiter.memory_growing(0, 3 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 2 << 20, None).unwrap());
    }
}
