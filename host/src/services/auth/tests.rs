//! The auth service over a real (in-memory SQLite) store, with a clock the tests move.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::*;
use crate::store::SqliteStore;

const T0: Millis = 1_700_000_000_000;
const MINUTE: Millis = 60_000;
const PASSWORD: &str = "a long enough password";

struct Harness {
    auth: AuthService,
    now: Arc<AtomicI64>,
    /// Keeps a PostgreSQL test database alive (and drops it at the end).
    _database: Option<crate::store::tests::PostgresDatabase>,
}

impl Harness {
    fn advance(&self, ms: Millis) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

async fn harness(postgres: bool) -> Harness {
    let (store, database): (Arc<dyn AuthStore>, _) = if postgres {
        let (store, database) = crate::store::tests::fresh_postgres().await;
        (Arc::new(store), Some(database))
    } else {
        (Arc::new(SqliteStore::open_in_memory().await.unwrap()), None)
    };
    let now = Arc::new(AtomicI64::new(T0));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let settings = AuthSettings::cheap_for_tests();
    let auth = AuthService::new(
        store,
        SigningKey::from_secret(&[3; 32]).unwrap(),
        settings,
        clock,
    )
    .await
    .unwrap();
    Harness {
        auth,
        now,
        _database: database,
    }
}

async fn user(h: &Harness, name: &str, role: Role) -> User {
    h.auth
        .create_user(
            SYSTEM_ACTOR,
            NewUser {
                username: name.into(),
                password: PASSWORD.into(),
                role,
            },
        )
        .await
        .unwrap()
}

fn is_unauthenticated(result: Result<impl std::fmt::Debug, ServiceError>) -> bool {
    matches!(result, Err(ServiceError::Unauthenticated(_)))
}

async fn first_start_creates_one_admin_with_a_generated_password_shown_once(h: &Harness) {
    let password = h.auth.ensure_first_admin(None).await.unwrap().unwrap();
    assert!(password.len() >= 24, "{password}");
    let session = h.auth.login("admin", &password, None).await.unwrap();
    assert_eq!(session.user.role, Role::Admin);
    // Once a user exists, nothing more is created and nothing is shown.
    assert_eq!(h.auth.ensure_first_admin(None).await.unwrap(), None);
    assert_eq!(h.auth.list_users().await.unwrap().len(), 1);
}

async fn first_start_takes_the_configured_password_and_checks_it(h: &Harness) {
    assert!(matches!(
        h.auth.ensure_first_admin(Some("short".into())).await,
        Err(ServiceError::Unprocessable { .. })
    ));
    assert_eq!(
        h.auth
            .ensure_first_admin(Some(PASSWORD.into()))
            .await
            .unwrap(),
        None
    );
    h.auth.login("admin", PASSWORD, None).await.unwrap();
}

async fn a_login_gives_an_access_token_that_authenticates_until_it_expires(h: &Harness) {
    let alice = user(h, "alice", Role::Operator).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    assert_eq!(session.access_ttl_secs, 15 * 60);
    let principal = h.auth.authenticate(&session.access_token).await.unwrap();
    assert_eq!(principal.user_id, alice.id);
    assert_eq!(principal.role, Role::Operator);
    h.advance(15 * MINUTE);
    assert!(is_unauthenticated(
        h.auth.authenticate(&session.access_token).await
    ));
}

async fn wrong_passwords_and_unknown_users_get_the_same_answer(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let wrong = h.auth.login("alice", "not the password!", None).await;
    let unknown = h.auth.login("mallory", PASSWORD, None).await;
    let (Err(wrong), Err(unknown)) = (wrong, unknown) else {
        panic!("both must fail");
    };
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert!(matches!(wrong, ServiceError::Unauthenticated(_)));
}

async fn a_disabled_user_cannot_log_in_and_loses_their_sessions(h: &Harness) {
    let bob = user(h, "bob", Role::Operator).await;
    let session = h.auth.login("bob", PASSWORD, None).await.unwrap();
    h.auth
        .update_user(
            SYSTEM_ACTOR,
            &bob.id,
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(is_unauthenticated(
        h.auth.login("bob", PASSWORD, None).await
    ));
    assert!(is_unauthenticated(
        h.auth.authenticate(&session.access_token).await
    ));
    assert!(is_unauthenticated(
        h.auth.refresh(&session.refresh_token).await
    ));
}

async fn refreshing_rotates_the_token_and_the_old_one_stops_working(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let first = h.auth.login("alice", PASSWORD, None).await.unwrap();
    h.advance(MINUTE);
    let second = h.auth.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    h.auth.authenticate(&second.access_token).await.unwrap();
    let third = h.auth.refresh(&second.refresh_token).await.unwrap();
    h.auth.authenticate(&third.access_token).await.unwrap();
}

async fn reusing_a_rotated_refresh_token_revokes_the_whole_session_and_is_audited(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let first = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let second = h.auth.refresh(&first.refresh_token).await.unwrap();
    // The stolen first token is presented again: the thief and the user both lose.
    assert!(is_unauthenticated(
        h.auth.refresh(&first.refresh_token).await
    ));
    assert!(is_unauthenticated(
        h.auth.refresh(&second.refresh_token).await
    ));
    h.advance(PRINCIPAL_CACHE_MS);
    assert!(is_unauthenticated(
        h.auth.authenticate(&second.access_token).await
    ));
    let audit = h.auth.list_audit(None, 10).await.unwrap();
    assert_eq!(audit.items[0].action, "security.refresh_reuse");
    assert_eq!(audit.items[0].target, "alice");
    // Another login is unaffected.
    let other = h.auth.login("alice", PASSWORD, None).await.unwrap();
    h.auth.authenticate(&other.access_token).await.unwrap();
}

async fn an_expired_refresh_token_is_refused(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    h.advance(AuthSettings::default().refresh_ttl_ms);
    assert!(is_unauthenticated(
        h.auth.refresh(&session.refresh_token).await
    ));
}

async fn logout_ends_the_session_at_once(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let principal = h.auth.authenticate(&session.access_token).await.unwrap();
    h.auth.logout(&principal).await.unwrap();
    assert!(is_unauthenticated(
        h.auth.authenticate(&session.access_token).await
    ));
    assert!(is_unauthenticated(
        h.auth.refresh(&session.refresh_token).await
    ));
}

async fn repeated_failures_throttle_the_account_until_the_window_ends(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    for _ in 0..5 {
        assert!(is_unauthenticated(
            h.auth.login("alice", "wrong password!!", None).await
        ));
    }
    // Even the right password is refused while throttled, with a time to wait.
    match h.auth.login("alice", PASSWORD, None).await {
        Err(ServiceError::Throttled {
            retry_after_secs, ..
        }) => assert_eq!(retry_after_secs, 15 * 60),
        other => panic!("expected throttling, got {other:?}"),
    }
    h.advance(15 * MINUTE);
    h.auth.login("alice", PASSWORD, None).await.unwrap();
}

async fn one_address_guessing_many_accounts_is_throttled(h: &Harness) {
    let address: IpAddr = "192.0.2.7".parse().unwrap();
    for n in 0..20 {
        let _ = h
            .auth
            .login(&format!("user{n}"), "wrong password!!", Some(address))
            .await;
    }
    assert!(matches!(
        h.auth
            .login("fresh", "wrong password!!", Some(address))
            .await,
        Err(ServiceError::Throttled { .. })
    ));
    let elsewhere: IpAddr = "192.0.2.8".parse().unwrap();
    assert!(is_unauthenticated(
        h.auth
            .login("fresh", "wrong password!!", Some(elsewhere))
            .await
    ));
}

async fn a_burst_of_wrong_passwords_reaches_the_hash_at_most_the_limit_times(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let address: IpAddr = "192.0.2.7".parse().unwrap();
    let before = h.auth.hashes_started();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let auth = h.auth.clone();
        burst.spawn(async move {
            auth.login("alice", "wrong password!!", Some(address))
                .await
                .map(drop)
        });
    }
    let (mut refused, mut throttled) = (0, 0);
    while let Some(answer) = burst.join_next().await {
        match answer.unwrap() {
            Err(ServiceError::Unauthenticated(_)) => refused += 1,
            Err(ServiceError::Throttled { .. }) => throttled += 1,
            other => panic!("{other:?}"),
        }
    }
    let hashed = h.auth.hashes_started() - before;
    let limit = ThrottleLimits::default().per_account_address;
    assert_eq!(refused, limit, "answered after a hash");
    assert_eq!(hashed, u64::from(limit), "hashes run");
    assert_eq!(throttled, 30 - limit);
}

async fn an_attacker_elsewhere_cannot_lock_the_real_admin_out(h: &Harness) {
    user(h, "admin", Role::Admin).await;
    for n in 1..=3 {
        let attacker: IpAddr = format!("198.51.100.{n}").parse().unwrap();
        for _ in 0..5 {
            let guess = h
                .auth
                .login("admin", "wrong password!!", Some(attacker))
                .await;
            assert!(is_unauthenticated(guess));
        }
        // That address is done with `admin` for the window, right password or not.
        let again = h.auth.login("admin", PASSWORD, Some(attacker)).await;
        assert!(
            matches!(again, Err(ServiceError::Throttled { .. })),
            "{again:?}"
        );
    }
    // The real admin, from their own address, logs in (after a short, bounded delay),
    // and under any letter case.
    let home: IpAddr = "192.0.2.1".parse().unwrap();
    let session = h.auth.login("Admin", PASSWORD, Some(home)).await.unwrap();
    assert_eq!(session.user.username, "admin");
    // Their own typo does not lock them out either.
    let typo = h.auth.login("admin", "wrong password!!", Some(home)).await;
    assert!(is_unauthenticated(typo));
    h.auth.login("admin", PASSWORD, Some(home)).await.unwrap();
}

async fn guessing_the_current_password_is_throttled(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let principal = h.auth.authenticate(&session.access_token).await.unwrap();
    let change = |current: &'static str| {
        h.auth
            .change_own_password(&principal, current, "a brand new password".into())
    };
    for _ in 0..5 {
        let guess = change("wrong password!!").await;
        assert!(
            matches!(guess, Err(ServiceError::Forbidden(_))),
            "{guess:?}"
        );
    }
    let before = h.auth.hashes_started();
    match change(PASSWORD).await {
        Err(ServiceError::Throttled {
            retry_after_secs, ..
        }) => assert_eq!(retry_after_secs, 15 * 60),
        other => panic!("expected throttling, got {other:?}"),
    }
    assert_eq!(h.auth.hashes_started(), before, "refused before hashing");
    h.advance(15 * MINUTE);
    change(PASSWORD).await.unwrap();
}

async fn usernames_compare_without_letter_case_and_long_ones_cost_nothing(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    for taken in ["ALICE", "Alice"] {
        let again = h
            .auth
            .create_user(
                SYSTEM_ACTOR,
                NewUser {
                    username: taken.into(),
                    password: PASSWORD.into(),
                    role: Role::Admin,
                },
            )
            .await;
        assert!(matches!(again, Err(ServiceError::Conflict(_))), "{again:?}");
    }
    let session = h.auth.login("ALICE", PASSWORD, None).await.unwrap();
    assert_eq!(session.user.username, "alice");
    assert_eq!(session.user.role, Role::Viewer);
    let before = h.auth.hashes_started();
    let long = "a".repeat(MAX_USERNAME_BYTES + 1);
    assert!(is_unauthenticated(
        h.auth.login(&long, PASSWORD, None).await
    ));
    assert_eq!(h.auth.hashes_started(), before);
}

#[test]
fn a_long_username_is_cut_in_logs() {
    let long = "é".repeat(100);
    let shown = loggable(&long);
    assert!(shown.len() < MAX_USERNAME_BYTES + 20, "{shown}");
    assert!(shown.ends_with("(200 bytes)"), "{shown}");
    assert_eq!(loggable("alice"), "alice");
}

async fn an_api_token_works_until_revoked_and_its_secret_is_not_stored(h: &Harness) {
    user(h, "ci", Role::Operator).await;
    let session = h.auth.login("ci", PASSWORD, None).await.unwrap();
    let owner = h.auth.authenticate(&session.access_token).await.unwrap();
    let (token, secret) = h
        .auth
        .create_api_token(
            &owner,
            NewApiToken {
                name: "deploy".into(),
                role: Role::Viewer,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert!(secret.starts_with(API_TOKEN_PREFIX));
    let principal = h.auth.authenticate(&secret).await.unwrap();
    assert_eq!(principal.role, Role::Viewer);
    assert_eq!(
        principal.via,
        Credential::ApiToken {
            token_id: token.id.clone()
        }
    );
    assert!(
        h.auth
            .store()
            .api_token_by_hash(&secret)
            .await
            .unwrap()
            .is_none(),
        "the secret itself is not a key of the store"
    );
    h.auth.revoke_api_token(&owner, &token.id).await.unwrap();
    assert!(is_unauthenticated(h.auth.authenticate(&secret).await));
}

async fn an_api_token_expires(h: &Harness) {
    user(h, "ci", Role::Operator).await;
    let session = h.auth.login("ci", PASSWORD, None).await.unwrap();
    let owner = h.auth.authenticate(&session.access_token).await.unwrap();
    let (_, secret) = h
        .auth
        .create_api_token(
            &owner,
            NewApiToken {
                name: "short-lived".into(),
                role: Role::Operator,
                expires_at: Some(T0 + 10 * MINUTE),
            },
        )
        .await
        .unwrap();
    h.auth.authenticate(&secret).await.unwrap();
    h.advance(10 * MINUTE);
    assert!(is_unauthenticated(h.auth.authenticate(&secret).await));
}

async fn a_token_never_outranks_its_creator(h: &Harness) {
    let bob = user(h, "bob", Role::Operator).await;
    let session = h.auth.login("bob", PASSWORD, None).await.unwrap();
    let owner = h.auth.authenticate(&session.access_token).await.unwrap();
    let too_high = h
        .auth
        .create_api_token(
            &owner,
            NewApiToken {
                name: "escalate".into(),
                role: Role::Admin,
                expires_at: None,
            },
        )
        .await;
    assert!(matches!(too_high, Err(ServiceError::Forbidden(_))));
    let (_, secret) = h
        .auth
        .create_api_token(
            &owner,
            NewApiToken {
                name: "ops".into(),
                role: Role::Operator,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    // Bob is demoted: his token follows him down.
    h.auth
        .update_user(
            SYSTEM_ACTOR,
            &bob.id,
            UserPatch {
                role: Some(Role::Viewer),
                ..UserPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        h.auth.authenticate(&secret).await.unwrap().role,
        Role::Viewer
    );
    // And a token cannot mint tokens.
    let as_token = h.auth.authenticate(&secret).await.unwrap();
    assert!(matches!(
        h.auth
            .create_api_token(
                &as_token,
                NewApiToken {
                    name: "child".into(),
                    role: Role::Viewer,
                    expires_at: None
                }
            )
            .await,
        Err(ServiceError::Forbidden(_))
    ));
}

async fn someone_elses_token_cannot_be_revoked_or_seen(h: &Harness) {
    user(h, "alice", Role::Operator).await;
    user(h, "eve", Role::Operator).await;
    let alice = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let alice = h.auth.authenticate(&alice.access_token).await.unwrap();
    let eve = h.auth.login("eve", PASSWORD, None).await.unwrap();
    let eve = h.auth.authenticate(&eve.access_token).await.unwrap();
    let (token, _) = h
        .auth
        .create_api_token(
            &alice,
            NewApiToken {
                name: "mine".into(),
                role: Role::Viewer,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert!(h.auth.list_api_tokens(&eve).await.unwrap().is_empty());
    assert!(matches!(
        h.auth.revoke_api_token(&eve, &token.id).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert_eq!(h.auth.list_api_tokens(&alice).await.unwrap().len(), 1);
}

async fn the_last_admin_can_be_neither_demoted_disabled_nor_deleted(h: &Harness) {
    let root = user(h, "root", Role::Admin).await;
    for patch in [
        UserPatch {
            role: Some(Role::Operator),
            ..UserPatch::default()
        },
        UserPatch {
            disabled: Some(true),
            ..UserPatch::default()
        },
    ] {
        assert!(matches!(
            h.auth.update_user(SYSTEM_ACTOR, &root.id, patch).await,
            Err(ServiceError::Conflict(_))
        ));
    }
    assert!(matches!(
        h.auth.delete_user(SYSTEM_ACTOR, &root.id).await,
        Err(ServiceError::Conflict(_))
    ));
    user(h, "second", Role::Admin).await;
    h.auth.delete_user(SYSTEM_ACTOR, &root.id).await.unwrap();
}

async fn changing_ones_password_needs_the_current_one_and_ends_every_session(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let me = h.auth.authenticate(&session.access_token).await.unwrap();
    assert!(matches!(
        h.auth
            .change_own_password(&me, "not my password", "brand new password".into())
            .await,
        Err(ServiceError::Forbidden(_))
    ));
    h.auth
        .change_own_password(&me, PASSWORD, "brand new password".into())
        .await
        .unwrap();
    assert!(is_unauthenticated(
        h.auth.authenticate(&session.access_token).await
    ));
    assert!(is_unauthenticated(
        h.auth.login("alice", PASSWORD, None).await
    ));
    h.auth
        .login("alice", "brand new password", None)
        .await
        .unwrap();
}

async fn user_and_token_changes_are_audited_without_secrets(h: &Harness) {
    user(h, "alice", Role::Operator).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let me = h.auth.authenticate(&session.access_token).await.unwrap();
    let (token, secret) = h
        .auth
        .create_api_token(
            &me,
            NewApiToken {
                name: "ci".into(),
                role: Role::Viewer,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    h.auth.revoke_api_token(&me, &token.id).await.unwrap();
    let audit = h.auth.list_audit(None, 10).await.unwrap().items;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.revoke", "token.create", "user.create"]);
    assert_eq!(audit[0].actor, "alice");
    let everything = serde_json::to_string(&audit).unwrap();
    assert!(!everything.contains(&secret));
    assert!(!everything.contains(PASSWORD));
}

async fn usernames_are_validated_and_unique(h: &Harness) {
    user(h, "alice", Role::Viewer).await;
    let taken = h
        .auth
        .create_user(
            SYSTEM_ACTOR,
            NewUser {
                username: "alice".into(),
                password: PASSWORD.into(),
                role: Role::Viewer,
            },
        )
        .await;
    assert!(matches!(taken, Err(ServiceError::Conflict(_))));
    let odd = h
        .auth
        .create_user(
            SYSTEM_ACTOR,
            NewUser {
                username: "al ice/..".into(),
                password: PASSWORD.into(),
                role: Role::Viewer,
            },
        )
        .await;
    assert!(matches!(odd, Err(ServiceError::BadField { .. })));
}

#[tokio::test]
async fn every_kind_of_runcell_credential_is_recognised_in_a_header_value() {
    let h = harness(false).await;
    user(&h, "alice", Role::Operator).await;
    let session = h.auth.login("alice", PASSWORD, None).await.unwrap();
    let principal = h.auth.authenticate(&session.access_token).await.unwrap();
    let (_, api_token) = h
        .auth
        .create_api_token(
            &principal,
            NewApiToken {
                name: "ci".into(),
                role: Role::Viewer,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    for value in [
        session.access_token.clone(),
        format!("Bearer {}", session.access_token),
        format!("theme=dark; s={}", session.access_token),
        api_token,
        session.refresh_token.clone(),
    ] {
        assert!(h.auth.carries_credential(&value), "{value}");
    }
    // Expired, it is still not the module's to see.
    h.advance(24 * 60 * MINUTE);
    assert!(h.auth.carries_credential(&session.access_token));
    // Someone else's JWT, and ordinary values, are not Runcell's.
    let other = TokenCodec::new(
        SigningKey::from_secret(&[9; 32]).unwrap(),
        "runcell",
        "runcell-api",
    )
    .issue("u", "s", T0, MINUTE)
    .0;
    for value in [other.as_str(), "theme=dark", "Signature abc", "a.b.c"] {
        assert!(!h.auth.carries_credential(value), "{value}");
    }
}

/// Runs each test against both store backends.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::harness(false).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::harness(true).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    first_start_creates_one_admin_with_a_generated_password_shown_once,
    first_start_takes_the_configured_password_and_checks_it,
    a_login_gives_an_access_token_that_authenticates_until_it_expires,
    wrong_passwords_and_unknown_users_get_the_same_answer,
    a_disabled_user_cannot_log_in_and_loses_their_sessions,
    refreshing_rotates_the_token_and_the_old_one_stops_working,
    reusing_a_rotated_refresh_token_revokes_the_whole_session_and_is_audited,
    an_expired_refresh_token_is_refused,
    logout_ends_the_session_at_once,
    repeated_failures_throttle_the_account_until_the_window_ends,
    one_address_guessing_many_accounts_is_throttled,
    a_burst_of_wrong_passwords_reaches_the_hash_at_most_the_limit_times,
    an_attacker_elsewhere_cannot_lock_the_real_admin_out,
    guessing_the_current_password_is_throttled,
    usernames_compare_without_letter_case_and_long_ones_cost_nothing,
    an_api_token_works_until_revoked_and_its_secret_is_not_stored,
    an_api_token_expires,
    a_token_never_outranks_its_creator,
    someone_elses_token_cannot_be_revoked_or_seen,
    the_last_admin_can_be_neither_demoted_disabled_nor_deleted,
    changing_ones_password_needs_the_current_one_and_ends_every_session,
    user_and_token_changes_are_audited_without_secrets,
    usernames_are_validated_and_unique,
);
