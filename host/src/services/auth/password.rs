//! Password hashing: argon2id with the parameters OWASP's Password Storage Cheat Sheet
//! recommends (19 MiB of memory, 2 passes, 1 lane). Hashing costs tens of milliseconds
//! of CPU on purpose, so it runs on tokio's blocking pool, never on a worker thread.
//!
//! Each hash holds its 19 MiB for as long as it runs, so hashes are bounded by a
//! [`HashGate`]: about one running per core, a few more waiting, and any beyond that
//! refused at once (`Overloaded`, retry in a second) rather than queued without bound.
//! Unbounded, 150 concurrent logins once took a server from 94 to 1,439 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

use crate::services::ServiceError;

/// Shorter passwords are refused: 12 characters of anything resist offline guessing of a
/// leaked hash far better than the classic 8 with composition rules.
pub(crate) const MIN_PASSWORD_CHARS: usize = 12;
/// Longer passwords are refused so a login request cannot make the server hash megabytes.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// The cost of hashing; OWASP's recommendation unless a test asks for cheaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HashCost {
    pub memory_kib: u32,
    pub passes: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            passes: Params::DEFAULT_T_COST,
        }
    }
}

impl HashCost {
    fn hasher(self) -> Argon2<'static> {
        let params = Params::new(self.memory_kib, self.passes, 1, None)
            .expect("argon2 parameters are within their bounds");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }
}

/// Checks a new password against the policy; the error names the field.
pub(crate) fn check_policy(field: &str, password: &str) -> Result<(), ServiceError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ServiceError::unprocessable(
            field,
            format!("{field}: must be at least {MIN_PASSWORD_CHARS} characters long"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ServiceError::unprocessable(
            field,
            format!("{field}: must be at most {MAX_PASSWORD_BYTES} bytes long"),
        ));
    }
    Ok(())
}

/// How many hashes run at once, and how many more may wait for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HashLimits {
    pub running: usize,
    pub waiting: usize,
}

impl HashLimits {
    /// One hash per core (a hash is one lane: one thread), and three waiting per core:
    /// enough for a burst of real users (each waits at most a few hashes' time), while
    /// at most `running` × 19 MiB is ever in use.
    pub(crate) fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            running: cores,
            waiting: 3 * cores,
        }
    }
}

/// The bound on concurrent hashing, shared by every hash and verification of a service.
#[derive(Debug, Clone)]
pub(crate) struct HashGate {
    /// Permits to be running or waiting: past these, refused at once.
    admitted: Arc<Semaphore>,
    /// Permits to run.
    running: Arc<Semaphore>,
    /// Hashes and verifications that ran, for tests and figures.
    started: Arc<AtomicU64>,
}

/// What a hash or verification beyond the gate's bound gets.
fn overloaded() -> ServiceError {
    ServiceError::Overloaded {
        message: "the server is checking too many passwords at once; retry in a second".to_owned(),
        retry_after_secs: 1,
    }
}

impl HashGate {
    pub(crate) fn new(limits: HashLimits) -> Self {
        let running = limits.running.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(running + limits.waiting)),
            running: Arc::new(Semaphore::new(running)),
            started: Arc::default(),
        }
    }

    /// How many hashes and verifications have run so far.
    #[cfg(test)]
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Runs `work` on the blocking pool once a turn is free; `Overloaded` at once when
    /// too many are already running or waiting.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let _admitted = self.admitted.try_acquire().map_err(|_| overloaded())?;
        let _running = self.running.acquire().await.map_err(|_| overloaded())?;
        self.started.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| ServiceError::Internal(format!("password hashing failed: {err}")))
    }

    /// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of `password`.
    pub(crate) async fn hash(
        &self,
        cost: HashCost,
        password: String,
    ) -> Result<String, ServiceError> {
        self.run(move || hash_now(cost, &password)).await?
    }

    /// Whether `password` matches `phc`; see [`verify_now`].
    pub(crate) async fn verify(&self, phc: String, password: String) -> Result<bool, ServiceError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        self.run(move || verify_now(&phc, &password)).await
    }
}

/// The PHC string of `password`, computed on this thread. The 19 MiB argon2 works in is
/// allocated for the call and freed when it returns.
fn hash_now(cost: HashCost, password: &str) -> Result<String, ServiceError> {
    cost.hasher()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| ServiceError::Internal(format!("cannot hash a password: {err}")))
}

/// Whether `password` matches `phc`, computed on this thread. The comparison of the
/// derived key is constant-time (inside `argon2`), and the work is the same whether or
/// not it matches.
fn verify_now(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // The parameters come from the stored hash, so old hashes keep verifying after the
    // default cost changes.
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// The PHC string of `password`, outside any gate: for the one a service makes as it
/// starts, before it serves anyone.
pub(crate) async fn hash(cost: HashCost, password: String) -> Result<String, ServiceError> {
    tokio::task::spawn_blocking(move || hash_now(cost, &password))
        .await
        .map_err(|err| ServiceError::Internal(format!("password hashing failed: {err}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        passes: 1,
    };

    fn gate() -> HashGate {
        HashGate::new(HashLimits {
            running: 2,
            waiting: 2,
        })
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let gate = gate();
        let phc = gate
            .hash(CHEAP, "correct horse battery".into())
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let verify = |phc: &str, password: &str| gate.verify(phc.into(), password.into());
        assert!(verify(&phc, "correct horse battery").await.unwrap());
        assert!(!verify(&phc, "correct horse batterY").await.unwrap());
        assert!(!verify("not a hash", "correct horse battery").await.unwrap());
        assert_eq!(gate.started(), 4);
    }

    #[tokio::test]
    async fn two_hashes_of_one_password_differ_by_their_salt() {
        let a = hash(CHEAP, "same password here".into()).await.unwrap();
        let b = gate()
            .hash(CHEAP, "same password here".into())
            .await
            .unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_beyond_the_running_and_waiting_bound_are_refused_at_once() {
        let gate = gate();
        // The real cost, so the first four are still running or waiting when the rest
        // arrive.
        let cost = HashCost::default();
        let attempts: Vec<_> = (0..12)
            .map(|n| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.hash(cost, format!("password number {n}")).await })
            })
            .collect();
        let mut hashed = 0;
        let mut refused = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => hashed += 1,
                Err(ServiceError::Overloaded {
                    retry_after_secs, ..
                }) => {
                    assert_eq!(retry_after_secs, 1);
                    refused += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(hashed >= 4, "{hashed} hashed");
        assert!(refused >= 1, "{refused} refused");
        assert_eq!(gate.started(), hashed);
        // Once they are done, a turn is free again.
        assert!(gate.hash(CHEAP, "afterwards".into()).await.is_ok());
    }

    #[test]
    fn the_default_cost_is_owasps() {
        let phc_params = HashCost::default();
        assert_eq!(phc_params.memory_kib, 19 * 1024);
        assert_eq!(phc_params.passes, 2);
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(check_policy("password", "short").is_err());
        assert!(check_policy("password", "twelve chars").is_ok());
        assert!(check_policy("password", &"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        // Characters, not bytes: twelve two-byte characters are long enough.
        assert!(check_policy("password", &"é".repeat(12)).is_ok());
    }
}
