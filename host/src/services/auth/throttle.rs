//! Login throttling: failed attempts are counted per account and per client address in
//! fixed windows; past the limit, logins for that key are refused until the window
//! ends. Per account it stops guessing one user's password from many addresses; per
//! address it stops one client from spraying many accounts.
//!
//! Counts live in this process: with several nodes behind a balancer an attacker gets
//! the limit once per node, which still bounds guessing to a handful of tries per
//! minute against argon2id hashes.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::Millis;

/// How many failures a key may have in one window, and how long a window lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub per_account: u32,
    pub per_address: u32,
    pub window_ms: Millis,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            window_ms: 15 * 60 * 1000,
        }
    }
}

/// Keys tracked before expired windows are swept, so a flood of distinct usernames
/// cannot grow the map without bound.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Default)]
pub struct Throttle {
    limits: ThrottleLimits,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_at: Millis,
    failures: u32,
}

impl Throttle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            windows: Mutex::default(),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limit_of(&self, key: &str) -> u32 {
        if key.starts_with("account:") {
            self.limits.per_account
        } else {
            self.limits.per_address
        }
    }

    /// If any of `keys` is over its limit at `now`, how many milliseconds until it
    /// may try again.
    pub fn blocked_for(&self, keys: &[String], now: Millis) -> Option<Millis> {
        let windows = self.windows();
        keys.iter()
            .filter_map(|key| {
                let window = windows.get(key)?;
                let ends_at = window.started_at + self.limits.window_ms;
                (now < ends_at && window.failures >= self.limit_of(key)).then_some(ends_at - now)
            })
            .max()
    }

    /// Counts one failure against each key.
    pub fn record_failure(&self, keys: &[String], now: Millis) {
        let mut windows = self.windows();
        if windows.len() >= SWEEP_AT {
            let window_ms = self.limits.window_ms;
            windows.retain(|_, w| now < w.started_at + window_ms);
        }
        for key in keys {
            let window = windows.entry(key.clone()).or_insert(Window {
                started_at: now,
                failures: 0,
            });
            if now >= window.started_at + self.limits.window_ms {
                *window = Window {
                    started_at: now,
                    failures: 0,
                };
            }
            window.failures += 1;
        }
    }

    /// Forgets the failures of `key` (a successful login clears its account).
    pub fn clear(&self, key: &str) {
        self.windows().remove(key);
    }
}

/// The throttle key of an account; usernames compare case-insensitively here so
/// `Admin` and `admin` share one budget.
pub fn account_key(username: &str) -> String {
    format!("account:{}", username.to_lowercase())
}

pub fn address_key(address: std::net::IpAddr) -> String {
    format!("address:{address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ThrottleLimits = ThrottleLimits {
        per_account: 3,
        per_address: 5,
        window_ms: 60_000,
    };

    #[test]
    fn an_account_is_blocked_after_its_limit_until_the_window_ends() {
        let throttle = Throttle::new(LIMITS);
        let keys = [account_key("alice")];
        for at in [0, 1_000, 2_000] {
            assert_eq!(throttle.blocked_for(&keys, at), None);
            throttle.record_failure(&keys, at);
        }
        assert_eq!(throttle.blocked_for(&keys, 2_000), Some(58_000));
        assert_eq!(throttle.blocked_for(&keys, 59_999), Some(1));
        assert_eq!(throttle.blocked_for(&keys, 60_000), None);
        // A new window starts from zero.
        throttle.record_failure(&keys, 60_000);
        assert_eq!(throttle.blocked_for(&keys, 60_001), None);
    }

    #[test]
    fn an_address_has_its_own_larger_budget() {
        let throttle = Throttle::new(LIMITS);
        let address = address_key("10.0.0.1".parse().unwrap());
        for (n, user) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let keys = [account_key(user), address.clone()];
            assert_eq!(throttle.blocked_for(&keys, 0), None, "attempt {n}");
            throttle.record_failure(&keys, 0);
        }
        assert!(
            throttle
                .blocked_for(&[account_key("f"), address.clone()], 0)
                .is_some()
        );
        // Another address is not affected.
        assert_eq!(
            throttle.blocked_for(&[address_key("10.0.0.2".parse().unwrap())], 0),
            None
        );
    }

    #[test]
    fn success_clears_the_account_and_names_compare_without_case() {
        let throttle = Throttle::new(LIMITS);
        let keys = [account_key("Bob")];
        for _ in 0..3 {
            throttle.record_failure(&keys, 0);
        }
        assert!(throttle.blocked_for(&[account_key("bob")], 0).is_some());
        throttle.clear(&account_key("BOB"));
        assert_eq!(throttle.blocked_for(&keys, 0), None);
    }
}
