//! Authentication and authorisation through the router: the auth routes, and every
//! route of the API with no token and with each role.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiState, Readiness, router};
use crate::domain::Role;
use crate::queue::{MemoryQueue, Queue};
use crate::services::Services;
use crate::services::auth::jwt::SigningKey;
use crate::services::auth::{AuthService, AuthSettings, NewUser, SYSTEM_ACTOR};
use crate::store::{SqliteStore, Store};

const PASSWORD: &str = "a long enough password";

/// An auth service on its own in-memory database, with cheap hashing, an `admin` user
/// and that admin's access token.
pub(super) async fn admin_auth() -> (AuthService, String) {
    let auth = auth_service(Arc::new(SqliteStore::open_in_memory().await.unwrap())).await;
    let token = user_token(&auth, "admin", Role::Admin).await;
    (auth, token)
}

async fn auth_service(store: Arc<SqliteStore>) -> AuthService {
    let settings = AuthSettings::cheap_for_tests();
    AuthService::new(
        store,
        SigningKey::from_secret(&[9; 32]).unwrap(),
        settings,
        AuthService::system_clock(),
    )
    .await
    .unwrap()
}

/// Creates user `name` with `role` and returns an access token of theirs.
async fn user_token(auth: &AuthService, name: &str, role: Role) -> String {
    auth.create_user(
        SYSTEM_ACTOR,
        NewUser {
            username: name.into(),
            password: PASSWORD.into(),
            role,
        },
    )
    .await
    .unwrap();
    auth.login(name, PASSWORD, None).await.unwrap().access_token
}

struct Harness {
    router: Router,
    auth: AuthService,
}

async fn harness() -> Harness {
    let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let dyn_store: Arc<dyn Store> = store.clone();
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::default());
    let services = Services::new(
        dyn_store,
        queue,
        None,
        crate::services::Capacity::with_workers(1),
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let auth = auth_service(store).await;
    let readiness = Readiness::new();
    readiness.set_workers_running(true);
    Harness {
        router: router(ApiState {
            services,
            auth: auth.clone(),
            readiness,
        }),
        auth,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Harness {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        self.send(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": username, "password": password})),
        )
        .await
    }
}

#[tokio::test]
async fn login_me_refresh_and_logout_over_http() {
    let h = harness().await;
    user_token(&h.auth, "alice", Role::Operator).await;
    let login = h.login("alice", PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["tokenType"], "Bearer");
    assert_eq!(login.body["expiresIn"], 900);
    assert_eq!(login.body["user"]["role"], "operator");
    assert!(login.body["user"].get("passwordHash").is_none());
    let access = login.body["accessToken"].as_str().unwrap().to_owned();
    let refresh = login.body["refreshToken"].as_str().unwrap().to_owned();

    let me = h
        .send(Method::GET, "/api/v1/auth/me", Some(&access), None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"]["username"], "alice");
    assert_eq!(me.body["effectiveRole"], "operator");

    let refreshed = h
        .send(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refreshToken": refresh})),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let access = refreshed.body["accessToken"].as_str().unwrap().to_owned();

    let logout = h
        .send(Method::POST, "/api/v1/auth/logout", Some(&access), None)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after = h
        .send(Method::GET, "/api/v1/auth/me", Some(&access), None)
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.body["error"]["code"], "unauthenticated");
    assert!(after.headers.contains_key(header::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn a_bad_login_is_401_and_a_flood_of_them_is_429_with_retry_after() {
    let h = harness().await;
    user_token(&h.auth, "alice", Role::Viewer).await;
    let wrong = h.login("alice", "wrong password!!").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.body["error"]["message"],
        "invalid username or password"
    );
    for _ in 0..4 {
        h.login("alice", "wrong password!!").await;
    }
    let throttled = h.login("alice", PASSWORD).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.body["error"]["code"], "too_many_requests");
    let retry_after: u64 = throttled.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn an_api_token_is_shown_once_listed_without_its_secret_and_revocable() {
    let h = harness().await;
    let access = user_token(&h.auth, "ci", Role::Operator).await;
    let created = h
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&access),
            Some(json!({"name": "deploy", "role": "operator"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let id = created.body["token"]["id"].as_str().unwrap().to_owned();

    let listed = h
        .send(Method::GET, "/api/v1/tokens", Some(&secret), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["items"][0]["id"], id.as_str());
    assert!(!listed.body.to_string().contains(&secret));

    let too_high = h
        .send(
            Method::POST,
            "/api/v1/tokens",
            Some(&access),
            Some(json!({"name": "escalate", "role": "admin"})),
        )
        .await;
    assert_eq!(too_high.status, StatusCode::FORBIDDEN);

    let revoked = h
        .send(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let after = h
        .send(Method::GET, "/api/v1/jobs", Some(&secret), None)
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tampered_and_unsigned_tokens_are_refused() {
    let h = harness().await;
    let access = user_token(&h.auth, "alice", Role::Admin).await;
    let mut tampered = access.clone();
    tampered.pop();
    tampered.push(if access.ends_with('A') { 'B' } else { 'A' });
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let payload = access.split('.').nth(1).unwrap();
    for token in [
        tampered,
        format!("{header}.{payload}."),
        "garbage".to_owned(),
    ] {
        let reply = h
            .send(Method::GET, "/api/v1/jobs", Some(&token), None)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token}");
    }
}

#[tokio::test]
async fn users_are_managed_by_admins_and_audited() {
    let h = harness().await;
    let admin = user_token(&h.auth, "root", Role::Admin).await;
    let created = h
        .send(
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "bob", "password": PASSWORD, "role": "viewer"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let weak = h
        .send(
            Method::POST,
            "/api/v1/users",
            Some(&admin),
            Some(json!({"username": "carol", "password": "short", "role": "viewer"})),
        )
        .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(weak.body["error"]["details"]["field"], "password");

    let promoted = h
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(&admin),
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK);
    assert_eq!(promoted.body["role"], "operator");

    let bob = h.login("bob", PASSWORD).await;
    let bob = bob.body["accessToken"].as_str().unwrap().to_owned();
    let forbidden = h.send(Method::GET, "/api/v1/users", Some(&bob), None).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.body["error"]["code"], "forbidden");

    let deleted = h
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    let audit = h
        .send(Method::GET, "/api/v1/audit", Some(&admin), None)
        .await;
    assert_eq!(audit.status, StatusCode::OK);
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..3],
        ["user.delete", "user.update", "user.create"],
        "{actions:?}"
    );
    assert!(!audit.body.to_string().contains(PASSWORD));
}

/// Every operation of the OpenAPI document (which is generated from the same
/// declarations as the router), plus the routes outside it.
async fn every_route(h: &Harness) -> Vec<(Method, String)> {
    let doc = h
        .send(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    let mut routes = vec![(Method::GET, "/api/docs".to_owned())];
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                routes.push((method, path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_answers_no_token_and_each_role_as_the_access_table_says() {
    let h = harness().await;
    for (name, role) in [
        ("viewer", Role::Viewer),
        ("operator", Role::Operator),
        ("admin", Role::Admin),
    ] {
        user_token(&h.auth, name, role).await;
    }
    let routes = every_route(&h).await;
    assert!(routes.len() > 30, "{routes:?}");
    for (method, template) in routes {
        let access = super::access::required(&method, &template)
            .unwrap_or_else(|| panic!("{method} {template} has no access decision"));
        let uri = template
            .replace("{id}", "missing")
            .replace("{name}", "missing");
        let body = matches!(method, Method::POST | Method::PATCH).then(|| json!({}));
        let anonymous = h.send(method.clone(), &uri, None, body.clone()).await;
        let needed = match access {
            super::access::Access::Public => {
                assert!(
                    !matches!(anonymous.status.as_u16(), 401 | 403 | 500),
                    "{method} {template} is public but answered {}",
                    anonymous.status
                );
                continue;
            }
            super::access::Access::Role(needed) => needed,
        };
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{method} {template} without a token: {}",
            anonymous.body
        );
        for role in Role::ALL {
            // A fresh session per request: logout ends the one it is sent with.
            let token = h
                .auth
                .login(role.as_str(), PASSWORD, None)
                .await
                .unwrap()
                .access_token;
            let reply = h
                .send(method.clone(), &uri, Some(&token), body.clone())
                .await;
            if role.allows(needed) {
                assert!(
                    !matches!(reply.status.as_u16(), 401 | 403 | 405 | 500),
                    "{method} {template} as {role} answered {}: {}",
                    reply.status,
                    reply.body
                );
                if method == Method::GET && !template.contains('{') {
                    assert!(
                        reply.status.is_success(),
                        "{method} {template} as {role} answered {}: {}",
                        reply.status,
                        reply.body
                    );
                }
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "{method} {template} as {role} (needs {needed}): {}",
                    reply.body
                );
            }
        }
    }
}

#[tokio::test]
async fn a_route_without_an_access_decision_is_closed() {
    // The table is the only door: anything it does not name is refused.
    assert_eq!(
        super::access::required(&Method::GET, "/api/v1/something-new"),
        None
    );
    assert_eq!(
        super::access::required(&Method::PUT, "/api/v1/jobs/{id}"),
        None
    );
    let h = harness().await;
    let admin = user_token(&h.auth, "root", Role::Admin).await;
    let reply = h
        .send(Method::PUT, "/api/v1/jobs/x", Some(&admin), Some(json!({})))
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}
