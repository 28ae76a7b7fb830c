//! Password hashing: argon2id with the parameters OWASP's Password Storage Cheat Sheet
//! recommends (19 MiB of memory, 2 passes, 1 lane). Hashing costs tens of milliseconds
//! of CPU on purpose, so it runs on tokio's blocking pool, never on a worker thread.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use crate::services::ServiceError;

/// Shorter passwords are refused: 12 characters of anything resist offline guessing of a
/// leaked hash far better than the classic 8 with composition rules.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longer passwords are refused so a login request cannot make the server hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The cost of hashing; OWASP's recommendation unless a test asks for cheaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
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
pub fn check_policy(field: &str, password: &str) -> Result<(), ServiceError> {
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

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of `password`.
pub async fn hash(cost: HashCost, password: String) -> Result<String, ServiceError> {
    tokio::task::spawn_blocking(move || {
        cost.hasher()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|err| ServiceError::Internal(format!("cannot hash a password: {err}")))
    })
    .await
    .map_err(|err| ServiceError::Internal(format!("password hashing failed: {err}")))?
}

/// Whether `password` matches `phc`. The comparison of the derived key is constant-time
/// (inside `argon2`), and the work is the same whether or not it matches.
pub async fn verify(phc: String, password: String) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        // The parameters come from the stored hash, so old hashes keep verifying after
        // the default cost changes.
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        passes: 1,
    };

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let phc = hash(CHEAP, "correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(verify(phc.clone(), "correct horse battery".into()).await);
        assert!(!verify(phc.clone(), "correct horse batterY".into()).await);
        assert!(!verify("not a hash".into(), "correct horse battery".into()).await);
    }

    #[tokio::test]
    async fn two_hashes_of_one_password_differ_by_their_salt() {
        let a = hash(CHEAP, "same password here".into()).await.unwrap();
        let b = hash(CHEAP, "same password here".into()).await.unwrap();
        assert_ne!(a, b);
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
