//! The hard limits of one execution and how users write them.

use std::time::Duration;

/// The unit fuel limits are written in: 8 million units, a nominal millisecond. It is not
/// a calibration. Fuel counts guest instructions (about one unit each), so its rate
/// depends on the code: measured on the reference machine (2 cores, 2026), compiled Rust
/// burns 11 to 24 million units per CPU millisecond ([`RUST_FUEL_PER_CPU_MS`]), so
/// 8,000,000,000 fuel lasts roughly 330 to 750 ms of it; an interpreted guest (Python)
/// lasts 0.6 to 2.5 s. Work the host does for a guest's calls is not fuel: it is measured
/// as CPU time beside it (`Usage::cpu_time`).
pub(crate) const FUEL_PER_CPU_MS: u64 = 8_000_000;

/// The fuel compiled Rust burned per CPU millisecond on the reference machine, lowest
/// and highest measured (a tight `burn` loop: 18 million; a spin: 24 million), for telling
/// users roughly what a fuel limit buys.
pub(crate) const RUST_FUEL_PER_CPU_MS: (u64, u64) = (11_000_000, 24_000_000);

/// What one execution may use. Each limit, when hit, ends the run with its own outcome so
/// the author knows which knob to turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Instructions the guest may execute, in wasmtime fuel units.
    pub fuel: u64,
    /// Wall-clock time from instantiation to result, host calls included.
    pub timeout: Duration,
    /// Linear memory the guest may hold at once, summed over its memories.
    pub memory_bytes: u64,
    /// Log lines kept per run (guest logs and captured stdout/stderr alike).
    pub max_log_lines: u32,
    /// Bytes of log messages and fields kept per run.
    pub max_log_bytes: u64,
    /// Size of the JSON output a job may return.
    pub max_output_bytes: u64,
}

impl Default for Limits {
    /// Safe defaults for a job that did not ask for more: 8,000,000,000 fuel (roughly 0.3 to
    /// 0.75 s of CPU for compiled Rust),
    /// thirty seconds of wall time, 64 MiB of memory, 1 MiB of output.
    fn default() -> Self {
        Self {
            fuel: 1_000 * FUEL_PER_CPU_MS,
            timeout: Duration::from_secs(30),
            memory_bytes: 64 * 1024 * 1024,
            max_log_lines: 10_000,
            max_log_bytes: 1024 * 1024,
            max_output_bytes: 1024 * 1024,
        }
    }
}

impl Limits {
    /// The most any job may ask for on this host unless the operator raises it.
    pub fn default_ceiling() -> Self {
        Self {
            fuel: 60_000 * FUEL_PER_CPU_MS,
            timeout: Duration::from_secs(15 * 60),
            memory_bytes: 1024 * 1024 * 1024,
            max_log_lines: 100_000,
            max_log_bytes: 16 * 1024 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
        }
    }

    /// The limits of a run: what was asked for explicitly, else the module's hint for the
    /// job, else these defaults. Log and output caps always come from the defaults.
    pub fn resolve(
        &self,
        fuel: Option<u64>,
        timeout: Option<Duration>,
        memory_bytes: Option<u64>,
        hint: Option<&super::JobSpec>,
    ) -> Limits {
        let hint_timeout = hint
            .and_then(|spec| spec.timeout_ms)
            .map(|ms| Duration::from_millis(ms.into()));
        Limits {
            fuel: fuel
                .or(hint.and_then(|spec| spec.fuel))
                .unwrap_or(self.fuel),
            timeout: timeout.or(hint_timeout).unwrap_or(self.timeout),
            memory_bytes: memory_bytes.unwrap_or(self.memory_bytes),
            ..*self
        }
    }

    /// Checks every limit against `ceiling`, naming the first one above it.
    pub fn check_within(&self, ceiling: &Limits) -> Result<(), LimitsError> {
        let checks = [
            ("fuel", self.fuel, ceiling.fuel),
            (
                "timeoutMs",
                duration_ms(self.timeout),
                duration_ms(ceiling.timeout),
            ),
            ("memoryBytes", self.memory_bytes, ceiling.memory_bytes),
            (
                "maxLogLines",
                u64::from(self.max_log_lines),
                u64::from(ceiling.max_log_lines),
            ),
            ("maxLogBytes", self.max_log_bytes, ceiling.max_log_bytes),
            (
                "maxOutputBytes",
                self.max_output_bytes,
                ceiling.max_output_bytes,
            ),
        ];
        for (field, value, max) in checks {
            if value == 0 {
                return Err(LimitsError::Zero { field });
            }
            if value > max {
                return Err(LimitsError::AboveCeiling { field, value, max });
            }
        }
        Ok(())
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A limit a caller asked for that this host will not grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("{field} is {value}, above this server's ceiling of {max}")]
    AboveCeiling {
        field: &'static str,
        value: u64,
        max: u64,
    },
}

/// Parses a byte size such as `64MiB`, `512 KiB`, `1GB` or a plain number of bytes.
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|err| format!("`{text}` is not a size like 64MiB or 512KiB: {err}"))?;
    Ok(size.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_accept_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_byte_size("512 KiB"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
    }

    #[test]
    fn byte_sizes_reject_nonsense_with_a_hint() {
        let err = parse_byte_size("lots").unwrap_err();
        assert!(err.contains("64MiB"), "{err}");
    }

    #[test]
    fn defaults_fit_under_the_default_ceiling() {
        assert_eq!(
            Limits::default().check_within(&Limits::default_ceiling()),
            Ok(())
        );
    }

    #[test]
    fn a_limit_above_the_ceiling_is_named() {
        let limits = Limits {
            memory_bytes: 2 << 30,
            ..Limits::default()
        };
        let err = limits.check_within(&Limits::default_ceiling()).unwrap_err();
        assert!(
            err.to_string().starts_with("memoryBytes is 2147483648"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_limit_is_refused() {
        let limits = Limits {
            fuel: 0,
            ..Limits::default()
        };
        assert_eq!(
            limits.check_within(&Limits::default_ceiling()),
            Err(LimitsError::Zero { field: "fuel" })
        );
    }
}
