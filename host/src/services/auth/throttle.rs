//! Throttling of password guesses, in three budgets per fixed window:
//!
//! - **per account and address, hard**: past its limit, that address may not try that
//!   account again until the window ends. This is what stops a guesser.
//! - **per address, hard**: one address spraying many accounts is stopped the same way.
//! - **per account, soft**: past a free allowance, every further attempt on the account,
//!   from anywhere, waits a delay that doubles with each failure up to a ceiling, then
//!   proceeds. Never a lockout: an attacker elsewhere can slow the real user down by at
//!   most the ceiling, never keep them out (the old rule, five failures lock the account
//!   from every address, let anyone lock `admin` out).
//!
//! An attempt counts against the hard budgets from the moment it starts, before its
//! password is hashed: a burst of concurrent guesses cannot all pass the check before the
//! first of them is recorded. One refused only because others are still in flight is
//! told to retry in a second, not to wait for the window's end: those may yet succeed.
//!
//! Counts live in this process: with several nodes behind a balancer an attacker gets the
//! limits once per node, which still bounds guessing to a handful of tries per window and
//! address against argon2id hashes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::domain::Millis;

/// The budgets, and how long a window lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThrottleLimits {
    /// Failures one address may have against one account in a window.
    pub per_account_address: u32,
    /// Failures one address may have against all accounts in a window.
    pub per_address: u32,
    /// Failures an account may have from everywhere in a window before attempts wait.
    pub per_account_free: u32,
    /// The wait of the first attempt past the free allowance; each further failure
    /// doubles it...
    pub account_delay_ms: Millis,
    /// ...up to this, the most an attacker can slow the real user down by.
    pub account_delay_max_ms: Millis,
    pub window_ms: Millis,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            per_account_address: 5,
            per_address: 20,
            per_account_free: 5,
            account_delay_ms: 500,
            account_delay_max_ms: 8_000,
            window_ms: 15 * 60 * 1000,
        }
    }
}

/// Keys tracked before expired windows are swept, so a flood of distinct usernames
/// cannot grow the map without bound while their windows run out.
const SWEEP_AT: usize = 10_000;

/// When a budget is full only of attempts still in flight: about one password check.
const IN_FLIGHT_RETRY_MS: Millis = 1_000;

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    limits: ThrottleLimits,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started_at: Millis,
    /// Attempts that failed in this window.
    failures: u32,
    /// Attempts started and not yet over (they outlive a window they started in).
    pending: u32,
}

/// The keys one attempt counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// Hard: this account from this address (or this user's password changes).
    pair: String,
    /// Hard: this address against any account.
    address: Option<String>,
    /// Soft: this account from anywhere.
    account: Option<String>,
}

impl Attempt {
    /// A login as `username` from `client`. Usernames compare without letter case, so
    /// `Admin` and `admin` share their budgets.
    pub(crate) fn login(username: &str, client: Option<IpAddr>) -> Self {
        let account = username.to_ascii_lowercase();
        let address = client.map(address_text);
        Self {
            pair: format!("pair:{account}|{}", address.as_deref().unwrap_or("unknown")),
            address: address.map(|a| format!("address:{a}")),
            account: Some(format!("account:{account}")),
        }
    }

    /// A guess at the current password of user `user_id` (to change it): a stolen access
    /// token must not become an oracle for the password behind it.
    pub(crate) fn password_check(user_id: &str) -> Self {
        Self {
            pair: format!("password:{user_id}"),
            address: None,
            account: None,
        }
    }
}

/// An address as throttled: IPv4 whole, IPv6 by its /64, which one subscriber usually
/// holds entirely (per address would give them 2^64 budgets).
fn address_text(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Throttle {
    pub(crate) fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            windows: Mutex::default(),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Failures of `key` in its current window at `now` (none if it ended).
    fn failures(&self, windows: &HashMap<String, Window>, key: &str, now: Millis) -> u32 {
        windows
            .get(key)
            .filter(|w| now < w.started_at + self.limits.window_ms)
            .map_or(0, |w| w.failures)
    }

    /// How long until `key`, over `limit`, may try again; `None` if it may now.
    fn blocked(
        &self,
        windows: &HashMap<String, Window>,
        key: &str,
        limit: u32,
        now: Millis,
    ) -> Option<Millis> {
        let window = windows.get(key)?;
        let ends_at = window.started_at + self.limits.window_ms;
        let failures = if now < ends_at { window.failures } else { 0 };
        if failures >= limit {
            Some(ends_at - now)
        } else if failures + window.pending >= limit {
            Some(IN_FLIGHT_RETRY_MS)
        } else {
            None
        }
    }

    /// Starts `attempt` at `now`: refused with the milliseconds until it may try again
    /// when a hard budget is spent (by failures, or by attempts in flight); otherwise
    /// counted at once and allowed, after the returned delay (zero unless the account is
    /// under attack). Every allowed attempt ends in [`Throttle::failed`],
    /// [`Throttle::succeeded`] or [`Throttle::abandoned`].
    pub(crate) fn begin(&self, attempt: &Attempt, now: Millis) -> Result<Millis, Millis> {
        let mut windows = self.windows();
        let refused = [
            Some((&attempt.pair, self.limits.per_account_address)),
            attempt
                .address
                .as_ref()
                .map(|key| (key, self.limits.per_address)),
        ]
        .into_iter()
        .flatten()
        .filter_map(|(key, limit)| self.blocked(&windows, key, limit, now))
        .max();
        if let Some(wait) = refused {
            return Err(wait);
        }
        let delay = attempt.account.as_ref().map_or(0, |key| {
            let failures = self.failures(&windows, key, now);
            self.account_delay(failures)
        });
        if windows.len() >= SWEEP_AT {
            let window_ms = self.limits.window_ms;
            windows.retain(|_, w| w.pending > 0 || now < w.started_at + window_ms);
        }
        for key in attempt.keys() {
            let window = windows.entry(key.clone()).or_insert(Window {
                started_at: now,
                failures: 0,
                pending: 0,
            });
            if now >= window.started_at + self.limits.window_ms {
                *window = Window {
                    started_at: now,
                    failures: 0,
                    pending: window.pending,
                };
            }
            window.pending += 1;
        }
        Ok(delay)
    }

    /// `attempt` failed (a wrong password, an unknown or disabled user): it counts as a
    /// failure in every budget.
    pub(crate) fn failed(&self, attempt: &Attempt) {
        let mut windows = self.windows();
        for key in attempt.keys() {
            if let Some(window) = windows.get_mut(key) {
                window.pending = window.pending.saturating_sub(1);
                window.failures += 1;
            }
        }
    }

    /// The wait of an attempt on an account that already has `failures` in its window.
    fn account_delay(&self, failures: u32) -> Millis {
        let Some(over) = failures.checked_sub(self.limits.per_account_free) else {
            return 0;
        };
        let doubled = self
            .limits
            .account_delay_ms
            .saturating_mul(1 << over.min(30));
        doubled.min(self.limits.account_delay_max_ms)
    }

    /// `attempt` succeeded: its address may try that account afresh, and the attempt does
    /// not count against the address or the account. Failures of others on the account
    /// still count: a real login does not reset an attacker's delay.
    pub(crate) fn succeeded(&self, attempt: &Attempt) {
        let mut windows = self.windows();
        Self::take_back(&mut windows, attempt.keys());
        // Attempts of the pair still in flight keep their count until they end.
        match windows.get_mut(&attempt.pair) {
            Some(pair) if pair.pending > 0 => pair.failures = 0,
            Some(_) => {
                windows.remove(&attempt.pair);
            }
            None => {}
        }
    }

    /// `attempt` never reached a password check (the server was too busy, or failed):
    /// it does not count.
    pub(crate) fn abandoned(&self, attempt: &Attempt) {
        let mut windows = self.windows();
        Self::take_back(&mut windows, attempt.keys());
    }

    fn take_back<'a>(
        windows: &mut HashMap<String, Window>,
        keys: impl Iterator<Item = &'a String>,
    ) {
        for key in keys {
            if let Some(window) = windows.get_mut(key) {
                window.pending = window.pending.saturating_sub(1);
            }
        }
    }
}

impl Attempt {
    fn keys(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.pair)
            .chain(&self.address)
            .chain(&self.account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ThrottleLimits = ThrottleLimits {
        per_account_address: 3,
        per_address: 5,
        per_account_free: 4,
        account_delay_ms: 100,
        account_delay_max_ms: 1_000,
        window_ms: 60_000,
    };

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    /// An attempt that starts at `now` and fails; the delay it was given.
    fn fail(throttle: &Throttle, attempt: &Attempt, now: Millis) -> Result<Millis, Millis> {
        let started = throttle.begin(attempt, now);
        if started.is_ok() {
            throttle.failed(attempt);
        }
        started
    }

    #[test]
    fn an_address_is_refused_an_account_after_its_limit_until_the_window_ends() {
        let throttle = Throttle::new(LIMITS);
        let attempt = Attempt::login("alice", ip("10.0.0.1"));
        for at in [0, 1_000, 2_000] {
            assert_eq!(fail(&throttle, &attempt, at), Ok(0));
        }
        assert_eq!(throttle.begin(&attempt, 2_000), Err(58_000));
        assert_eq!(throttle.begin(&attempt, 59_999), Err(1));
        // A new window starts from zero.
        assert_eq!(throttle.begin(&attempt, 60_000), Ok(0));
    }

    #[test]
    fn an_attempt_counts_when_it_starts_so_a_burst_cannot_pass_together() {
        let throttle = Throttle::new(LIMITS);
        let attempt = Attempt::login("alice", ip("10.0.0.1"));
        // Nothing has finished yet, still only the limit passes; the rest are told to
        // retry in a second, since those in flight may succeed.
        let started: Vec<_> = (0..50).map(|_| throttle.begin(&attempt, 0)).collect();
        assert_eq!(started.iter().filter(|s| s.is_ok()).count(), 3);
        assert!(started[3..].iter().all(|s| *s == Err(IN_FLIGHT_RETRY_MS)));
        for _ in 0..3 {
            throttle.failed(&attempt);
        }
        assert_eq!(throttle.begin(&attempt, 0), Err(60_000));
    }

    #[test]
    fn another_address_is_never_locked_out_only_slowed_within_a_ceiling() {
        let throttle = Throttle::new(LIMITS);
        // Attackers from many addresses spend their budgets on `admin`.
        for n in 0..20 {
            let attacker = Attempt::login("admin", ip(&format!("10.0.1.{n}")));
            for _ in 0..3 {
                assert!(fail(&throttle, &attacker, 0).is_ok());
            }
            assert!(throttle.begin(&attacker, 0).is_err(), "attacker {n}");
        }
        // The real admin, elsewhere, is let through after the longest delay.
        let admin = Attempt::login("Admin", ip("192.0.2.7"));
        assert_eq!(throttle.begin(&admin, 1), Ok(LIMITS.account_delay_max_ms));
        throttle.succeeded(&admin);
        assert_eq!(throttle.begin(&admin, 2), Ok(LIMITS.account_delay_max_ms));
    }

    #[test]
    fn the_account_delay_grows_by_doubling_after_the_free_allowance() {
        let throttle = Throttle::new(ThrottleLimits {
            per_account_address: 100,
            per_address: 100,
            ..LIMITS
        });
        let attempt = Attempt::login("bob", ip("10.0.0.1"));
        let delays: Vec<Millis> = (0..10)
            .map(|_| fail(&throttle, &attempt, 0).unwrap())
            .collect();
        assert_eq!(delays, [0, 0, 0, 0, 100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn an_address_has_its_own_budget_across_accounts() {
        let throttle = Throttle::new(LIMITS);
        for user in ["a", "b", "c", "d", "e"] {
            assert!(fail(&throttle, &Attempt::login(user, ip("10.0.0.1")), 0).is_ok());
        }
        assert!(
            throttle
                .begin(&Attempt::login("f", ip("10.0.0.1")), 0)
                .is_err()
        );
        assert!(
            throttle
                .begin(&Attempt::login("f", ip("10.0.0.2")), 0)
                .is_ok()
        );
        // One IPv6 subscriber's /64 is one address.
        for n in 1..=5 {
            let from = ip(&format!("2001:db8:1:2::{n}"));
            assert!(fail(&throttle, &Attempt::login(&format!("u{n}"), from), 0).is_ok());
        }
        let same_net = Attempt::login("u6", ip("2001:db8:1:2:ffff::1"));
        assert!(throttle.begin(&same_net, 0).is_err());
    }

    #[test]
    fn success_clears_the_pair_and_an_abandoned_attempt_does_not_count() {
        let throttle = Throttle::new(LIMITS);
        let attempt = Attempt::login("Bob", ip("10.0.0.1"));
        for _ in 0..2 {
            fail(&throttle, &attempt, 0).unwrap();
        }
        let success = Attempt::login("BOB", ip("10.0.0.1"));
        throttle.begin(&success, 0).unwrap();
        throttle.succeeded(&success);
        for _ in 0..3 {
            throttle.begin(&attempt, 0).unwrap();
            throttle.abandoned(&attempt);
        }
        for _ in 0..3 {
            assert!(fail(&throttle, &attempt, 0).is_ok());
        }
        assert!(throttle.begin(&attempt, 0).is_err());
    }
}
