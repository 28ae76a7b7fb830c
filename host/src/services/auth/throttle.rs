//! Login throttling: failed attempts are counted per account and per client address in
//! fixed windows; past the limit, logins for that key are refused until the window
//! ends. Per account it stops guessing one user's password from many addresses; per
//! address it stops one client from spraying many accounts.
//!
//! An attempt is counted as a failure when it starts, before its password is hashed, and
//! taken back if it succeeds or never reaches the hash: a burst of concurrent guesses
//! cannot all pass the check before the first of them is recorded.
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

    /// Starts an attempt counted against `keys` at `now`: refused with the milliseconds
    /// until it may try again when any key is over its limit; otherwise counted as a
    /// failure at once, so concurrent attempts see it.
    pub fn begin(&self, keys: &[String], now: Millis) -> Result<(), Millis> {
        let mut windows = self.windows();
        let blocked = keys
            .iter()
            .filter_map(|key| {
                let window = windows.get(key)?;
                let ends_at = window.started_at + self.limits.window_ms;
                (now < ends_at && window.failures >= self.limit_of(key)).then_some(ends_at - now)
            })
            .max();
        if let Some(wait) = blocked {
            return Err(wait);
        }
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
        Ok(())
    }

    /// The attempt counted against `keys` succeeded: the account (`keys[0]`) may try
    /// afresh, and the attempt no longer counts against the others.
    pub fn succeeded(&self, keys: &[String]) {
        let mut windows = self.windows();
        if let Some((account, others)) = keys.split_first() {
            windows.remove(account);
            Self::take_back(&mut windows, others);
        }
    }

    /// The attempt counted against `keys` never reached a password check (the server
    /// was too busy, or failed): it is not counted.
    pub fn abandoned(&self, keys: &[String]) {
        Self::take_back(&mut self.windows(), keys);
    }

    fn take_back(windows: &mut HashMap<String, Window>, keys: &[String]) {
        for key in keys {
            if let Some(window) = windows.get_mut(key) {
                window.failures = window.failures.saturating_sub(1);
            }
        }
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
            assert_eq!(throttle.begin(&keys, at), Ok(()));
        }
        assert_eq!(throttle.begin(&keys, 2_000), Err(58_000));
        assert_eq!(throttle.begin(&keys, 59_999), Err(1));
        // A new window starts from zero.
        assert_eq!(throttle.begin(&keys, 60_000), Ok(()));
    }

    #[test]
    fn an_attempt_counts_when_it_starts_so_a_burst_cannot_pass_together() {
        let throttle = Throttle::new(LIMITS);
        let keys = [account_key("alice")];
        // Nothing has finished yet: no failure was reported, still only the limit passes.
        let passed = (0..50).filter(|_| throttle.begin(&keys, 0).is_ok()).count();
        assert_eq!(passed, 3);
    }

    #[test]
    fn an_address_has_its_own_larger_budget() {
        let throttle = Throttle::new(LIMITS);
        let address = address_key("10.0.0.1".parse().unwrap());
        for (n, user) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let keys = [account_key(user), address.clone()];
            assert_eq!(throttle.begin(&keys, 0), Ok(()), "attempt {n}");
        }
        assert!(
            throttle
                .begin(&[account_key("f"), address.clone()], 0)
                .is_err()
        );
        // Another address is not affected.
        let elsewhere = [account_key("f"), address_key("10.0.0.2".parse().unwrap())];
        assert_eq!(throttle.begin(&elsewhere, 0), Ok(()));
    }

    #[test]
    fn success_clears_the_account_and_an_abandoned_attempt_does_not_count() {
        let throttle = Throttle::new(LIMITS);
        let keys = [account_key("Bob")];
        for _ in 0..2 {
            throttle.begin(&keys, 0).unwrap();
        }
        throttle.succeeded(&[account_key("BOB")]);
        for _ in 0..3 {
            throttle.begin(&keys, 0).unwrap();
            throttle.abandoned(&keys);
        }
        for _ in 0..3 {
            assert!(throttle.begin(&keys, 0).is_ok());
        }
        assert!(throttle.begin(&keys, 0).is_err());
    }
}
