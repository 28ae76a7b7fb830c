//! The HTTP layer driven without a socket: a real in-memory SQLite store and real
//! services behind the router, no workers (a test plays the worker where it needs one).

mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiState, Readiness, router};
use crate::domain::{
    Capabilities, CodeApproval, ExecutionResult, ExecutionStatus, JobSpec, LogEntry, LogLevel,
    Manifest, Role, Setting, Uploader, now_millis,
};
use crate::queue::{MemoryQueue, Queue};
use crate::services::secrets::{KEY_BYTES, SecretBox};
use crate::services::{ServiceSettings, Services};
use crate::store::{ExecutionFilter, SqliteStore, Store, VersionUpload};

struct TestApi {
    router: Router,
    services: Services,
    readiness: Readiness,
    /// An admin's access token, sent with every request that brings none.
    token: String,
}

/// What came back: status, headers and the body as JSON (`Null` when empty).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    fn error_field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default()
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

async fn api() -> TestApi {
    api_with(ServiceSettings::default()).await
}

async fn api_with(settings: ServiceSettings) -> TestApi {
    built_api(settings, None).await
}

/// The API of a server that has a key to seal secret settings with.
async fn api_with_secret_key() -> TestApi {
    let key = SecretBox::new(&[7; KEY_BYTES]).unwrap();
    built_api(ServiceSettings::default(), Some(key)).await
}

async fn built_api(settings: ServiceSettings, secrets: Option<SecretBox>) -> TestApi {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::default());
    let mut services = Services::new(
        store,
        queue,
        None,
        crate::services::Capacity::with_workers(1),
        Default::default(),
        settings,
    )
    .unwrap();
    services.secrets = secrets;
    let readiness = Readiness::new();
    readiness.set_workers_running(true);
    let (auth, token) = super::access_tests::admin_auth().await;
    let router = router(ApiState {
        services: services.clone(),
        auth,
        readiness: readiness.clone(),
    });
    TestApi {
        router,
        services,
        readiness,
        token,
    }
}

#[tokio::test]
async fn jobs_following_their_modules_default_schedule_take_each_new_versions() {
    let api = api().await;
    let install = |schedule: Option<&str>, version: &str| {
        let mut manifest = manifest(version);
        manifest.jobs[0].default_schedule = schedule.map(str::to_owned);
        let services = api.services.clone();
        let version = version.to_owned();
        async move {
            let record = services
                .store
                .install_module_version(
                    &manifest,
                    &format!("hash-{version}"),
                    b"not wasm",
                    &by_admin(),
                    now_millis(),
                )
                .await
                .unwrap();
            services.follow_default_schedules(&record).await.unwrap();
        }
    };
    install(Some("0 * * * *"), "1.0.0").await;
    let following = api
        .create_job(json!({"name": "following", "module": "fake", "job": "work"}))
        .await;
    assert_eq!(following["schedule"], "0 * * * *");
    let own = api
        .create_job(
            json!({"name": "own", "module": "fake", "job": "work", "schedule": "5 * * * *"}),
        )
        .await;
    assert_eq!(own["scheduleSource"], "job");

    install(Some("30 * * * *"), "2.0.0").await;
    let job = |body: &Value| {
        let services = api.services.clone();
        let id = body["id"].as_str().unwrap().to_owned();
        async move { services.get_job(&id).await.unwrap() }
    };
    let moved = job(&following).await;
    assert_eq!(moved.schedule.as_deref(), Some("30 * * * *"));
    assert!(moved.next_run_at.is_some());
    assert_eq!(job(&own).await.schedule.as_deref(), Some("5 * * * *"));

    // A version that declares no default leaves the job unscheduled, until one does.
    install(None, "3.0.0").await;
    let moved = job(&following).await;
    assert_eq!((moved.schedule, moved.next_run_at), (None, None));
    assert_eq!(moved.schedule_source, crate::domain::ScheduleSource::Module);
}

fn manifest(version: &str) -> Manifest {
    Manifest {
        name: "fake".to_owned(),
        version: version.to_owned(),
        description: "a module that exists only in the database".to_owned(),
        jobs: vec![JobSpec {
            name: "work".to_owned(),
            description: "works".to_owned(),
            default_schedule: None,
            input_schema: None,
            timeout_ms: Some(1_000),
            fuel: None,
        }],
        capabilities: Capabilities::default(),
        settings: Vec::new(),
    }
}

fn line(seq: u32, message: &str) -> LogEntry {
    LogEntry {
        seq,
        ts_ms: 1_700_000_000_000 + u64::from(seq),
        level: LogLevel::Info,
        message: message.to_owned(),
        fields: serde_json::Map::from_iter([("n".to_owned(), json!(seq))]),
    }
}

/// An upload by an admin, whose code is approved as installed.
fn by_admin() -> VersionUpload {
    VersionUpload {
        uploaded_by: Some(Uploader {
            username: "admin".to_owned(),
            role: Role::Admin,
            token: None,
        }),
        signed_by: None,
        approval: Some(CodeApproval {
            by: "admin".to_owned(),
            at: now_millis(),
            key: None,
        }),
    }
}

impl TestApi {
    /// Installs module `fake` (version `version`) without wasm: the API never runs it.
    async fn install_fake(&self, version: &str) {
        let hash = format!("hash-{version}");
        self.services
            .store
            .install_module_version(
                &manifest(version),
                &hash,
                b"not wasm",
                &by_admin(),
                now_millis(),
            )
            .await
            .unwrap();
    }

    async fn send(&self, mut request: Request<Body>) -> Reply {
        if !request.headers().contains_key(header::AUTHORIZATION) {
            let bearer = format!("Bearer {}", self.token);
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer.parse().unwrap());
        }
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, uri: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri).await
    }

    async fn raw(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap();
        self.send(request).await
    }

    async fn json(&self, method: Method, uri: &str, body: &Value) -> Reply {
        self.raw(method, uri, "application/json", body.to_string())
            .await
    }

    async fn create_job(&self, body: Value) -> Value {
        let reply = self.json(Method::POST, "/api/v1/jobs", &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    /// A job `name` of the fake module (installed first).
    async fn fake_job(&self, name: &str) -> String {
        self.install_fake("1.0.0").await;
        let job = self
            .create_job(json!({"name": name, "module": "fake", "job": "work"}))
            .await;
        job["id"].as_str().unwrap().to_owned()
    }

    async fn execute(&self, job_id: &str) -> String {
        let reply = self
            .call(Method::POST, &format!("/api/v1/jobs/{job_id}/execute"))
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        reply.body["executionId"].as_str().unwrap().to_owned()
    }

    /// Plays the worker: claims `id` and records it completed with `logs`.
    async fn complete(&self, id: &str, logs: Vec<LogEntry>) {
        let now = now_millis();
        let claimed = self
            .services
            .store
            .claim_executions(&[id.to_owned()], "test-node", now, now + 60_000)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        self.record(id, logs).await;
    }

    async fn record(&self, id: &str, logs: Vec<LogEntry>) {
        let result = ExecutionResult {
            id: id.to_owned(),
            status: ExecutionStatus::Completed,
            result: Some(r#"{"ok":true}"#.to_owned()),
            error: None,
            error_kind: None,
            finished_at: now_millis(),
            duration_ms: 1.0,
            fuel_consumed: 10,
            memory_peak_bytes: 65_536,
            cpu_time_ms: 2.5,
            logs,
            outbound: Vec::new(),
        };
        let recorded = self
            .services
            .store
            .record_results(&[result], &[])
            .await
            .unwrap();
        assert_eq!(recorded, [id.to_owned()]);
    }
}

// ---- the shape of every response ------------------------------------------------------

#[tokio::test]
async fn unknown_routes_are_404_in_the_error_shape() {
    let api = api().await;
    for uri in ["/nope", "/api/v1/nope", "/api/v2/jobs"] {
        let reply = api.get(uri).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(reply.error_code(), "not_found");
        assert!(reply.message().contains(uri), "{}", reply.message());
    }
}

#[tokio::test]
async fn wrong_methods_are_405_in_the_error_shape_with_an_allow_header() {
    let api = api().await;
    let reply = api.call(Method::DELETE, "/api/v1/jobs").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error_code(), "method_not_allowed");
    assert!(
        reply.message().contains("/api/v1/jobs"),
        "{}",
        reply.message()
    );
    let allow = reply.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let reply = api.call(Method::POST, "/healthz").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error_code(), "method_not_allowed");
}

#[tokio::test]
async fn every_response_carries_a_request_id_generated_when_absent() {
    let api = api().await;
    for uri in ["/healthz", "/nope", "/api/v1/jobs/missing"] {
        let reply = api.get(uri).await;
        let id = reply.headers["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{uri}: {id}");
    }
    let request = Request::get("/api/v1/jobs")
        .header("x-request-id", "client-chosen-42")
        .body(Body::empty())
        .unwrap();
    let reply = api.send(request).await;
    assert_eq!(reply.headers["x-request-id"], "client-chosen-42");
}

#[tokio::test]
async fn a_panic_becomes_a_generic_500_that_keeps_its_cause_out_of_the_body() {
    let response = super::error::panic_response(Box::new("secret detail".to_owned()));
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value =
        serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "internal");
    assert!(!body.to_string().contains("secret detail"), "{body}");
}

#[tokio::test]
async fn probes_say_what_is_down() {
    let api = api().await;
    let reply = api.get("/healthz").await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let reply = api.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        json!({"status": "ready", "checks": {"database": "ok", "queue": "ok", "workers": "running"}})
    );
    api.readiness.set_workers_running(false);
    let reply = api.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "not_ready");
    assert!(
        reply.message().contains("workers not running"),
        "{}",
        reply.message()
    );
    assert_eq!(
        reply.body["error"]["details"]["checks"]["workers"],
        "stopped"
    );
    assert_eq!(reply.body["error"]["details"]["checks"]["database"], "ok");
}

// ---- what clients send ------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_a_400_that_is_not_about_a_field() {
    let api = api().await;
    for body in [
        r#"{"name": "#,
        "not json",
        r#"{"name": "a", "module": "m", "job": "j"} {}"#,
    ] {
        let reply = api
            .raw(Method::POST, "/api/v1/jobs", "application/json", body)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error_code(), "malformed_json", "{body}");
    }
    let reply = api
        .raw(Method::POST, "/api/v1/jobs", "application/json", "")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("empty"), "{}", reply.message());
}

#[tokio::test]
async fn unknown_fields_wrong_types_and_missing_fields_are_400_naming_the_field() {
    let api = api().await;
    let cases = [
        (
            json!({"name": "a", "module": "m", "job": "j", "colour": "red"}),
            "colour",
            "unknown field",
        ),
        (
            json!({"name": "a", "module": "m", "job": "j", "maxAttempts": "3"}),
            "maxAttempts",
            "invalid type",
        ),
        (json!({"name": "a", "job": "j"}), "module", "missing field"),
        (
            json!({"name": "a", "module": "m", "job": "j", "fuel": -1}),
            "fuel",
            "invalid value",
        ),
    ];
    for (body, field, says) in cases {
        let reply = api.json(Method::POST, "/api/v1/jobs", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error_code(), "invalid_field", "{body}");
        assert_eq!(reply.error_field(), field, "{body}");
        assert!(reply.message().starts_with(field), "{}", reply.message());
        assert!(reply.message().contains(says), "{}", reply.message());
    }
}

#[tokio::test]
async fn a_json_route_refuses_a_body_that_is_not_declared_json() {
    let api = api().await;
    let body = json!({"topic": "a.b"}).to_string();
    let reply = api
        .raw(Method::POST, "/api/v1/events", "text/plain", body.clone())
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.error_code(), "unsupported_media_type");
    assert!(
        reply.message().contains("application/json"),
        "{}",
        reply.message()
    );
    let reply = api
        .raw(
            Method::POST,
            "/api/v1/events",
            "application/json; charset=utf-8",
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
}

#[tokio::test]
async fn bodies_above_a_megabyte_are_413_and_module_uploads_have_their_own_limit() {
    let api = api_with(ServiceSettings {
        max_module_bytes: 4096,
        ..ServiceSettings::default()
    })
    .await;
    let payload = "x".repeat(super::extract::JSON_BODY_LIMIT);
    let body = json!({"topic": "big.one", "payload": payload});
    let reply = api.json(Method::POST, "/api/v1/events", &body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "payload_too_large");
    assert_eq!(
        reply.body["error"]["details"]["limitBytes"],
        super::extract::JSON_BODY_LIMIT
    );
    assert!(reply.message().contains("1 MiB"), "{}", reply.message());

    let reply = api
        .raw(
            Method::POST,
            "/api/v1/modules",
            "application/wasm",
            vec![0_u8; 4097],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["error"]["details"]["limitBytes"], 4096);
    let reply = api
        .raw(
            Method::POST,
            "/api/v1/modules",
            "multipart/form-data; boundary=XX",
            multipart("module", &[0_u8; 5000]),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
}

fn multipart(field: &str, content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--XX\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"m.wasm\"\r\nContent-Type: application/wasm\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(b"\r\n--XX--\r\n");
    body
}

#[tokio::test]
async fn uploads_say_what_to_send_and_why_a_file_is_not_a_module() {
    let api = api().await;
    let reply = api
        .raw(Method::POST, "/api/v1/modules", "text/plain", "hello")
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        reply.message().contains("application/wasm"),
        "{}",
        reply.message()
    );
    assert!(reply.message().contains("`module`"), "{}", reply.message());

    let reply = api
        .raw(
            Method::POST,
            "/api/v1/modules",
            "application/wasm",
            "just some text",
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code(), "invalid_module");

    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let reply = api
        .raw(
            Method::POST,
            "/api/v1/modules",
            "application/octet-stream",
            core_module,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code(), "invalid_module");

    let reply = api
        .raw(
            Method::POST,
            "/api/v1/modules",
            "multipart/form-data; boundary=XX",
            multipart("file", b"\0asm"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_field(), "module");

    let reply = api
        .raw(
            Method::POST,
            "/api/v1/modules",
            "multipart/form-data; boundary=XX",
            multipart("module", b"not wasm"),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert!(
        api.get("/api/v1/modules").await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn page_sizes_outside_one_to_five_hundred_are_refused() {
    let api = api().await;
    for limit in ["0", "501", "ten", "-1"] {
        let reply = api.get(&format!("/api/v1/jobs?limit={limit}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{limit}");
        assert_eq!(reply.error_field(), "limit");
    }
    assert_eq!(
        api.get("/api/v1/jobs?limit=500").await.status,
        StatusCode::OK
    );
}

// ---- modules and jobs ---------------------------------------------------------------------

#[tokio::test]
async fn modules_list_show_versions_and_change_status() {
    let api = api().await;
    api.install_fake("1.0.0").await;
    api.install_fake("1.1.0").await;
    let reply = api.get("/api/v1/modules").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["items"][0]["name"], "fake");
    assert_eq!(reply.body["nextCursor"], Value::Null);

    let module = api.get("/api/v1/modules/fake").await.body;
    assert_eq!(module["version"], "1.1.0");
    assert_eq!(module["status"], "ENABLED");
    assert_eq!(module["contentHash"], "hash-1.1.0");
    assert_eq!(module["jobs"][0]["name"], "work");
    assert_eq!(module["capabilities"]["keyValue"], false);

    let versions = api.get("/api/v1/modules/fake/versions").await.body;
    let listed: Vec<(&str, bool)> = versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("1.1.0", true), ("1.0.0", false)]);

    let reply = api.call(Method::POST, "/api/v1/modules/fake/disable").await;
    assert_eq!(
        (reply.status, &reply.body["status"]),
        (StatusCode::OK, &json!("DISABLED"))
    );
    let reply = api.call(Method::POST, "/api/v1/modules/fake/enable").await;
    assert_eq!(reply.body["status"], "ENABLED");

    let reply = api.get("/api/v1/modules/ghost").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["error"]["details"]["resource"], "module");
    assert_eq!(reply.body["error"]["details"]["id"], "ghost");
    let reply = api.get("/api/v1/modules/ghost/versions").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_module_in_use_is_409_unless_forced() {
    let api = api().await;
    let job_id = api.fake_job("uses-fake").await;
    let reply = api.call(Method::DELETE, "/api/v1/modules/fake").await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.error_code(), "conflict");
    assert!(reply.message().contains("uses-fake"), "{}", reply.message());
    assert!(
        reply.message().contains("force=true"),
        "{}",
        reply.message()
    );
    let reply = api
        .call(Method::DELETE, "/api/v1/modules/fake?force=maybe")
        .await;
    assert_eq!(reply.error_field(), "force");
    let reply = api
        .call(Method::DELETE, "/api/v1/modules/fake?force=true")
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.body, Value::Null);
    assert_eq!(
        api.get("/api/v1/modules/fake").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/api/v1/jobs/{job_id}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn jobs_are_created_read_changed_listed_and_deleted() {
    let api = api().await;
    api.install_fake("1.0.0").await;
    let reply = api
        .json(
            Method::POST,
            "/api/v1/jobs",
            &json!({"name": "every-minute", "module": "fake", "job": "work",
                    "schedule": "* * * * *", "input": {"a": 1}, "maxAttempts": 3}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/jobs/{id}")
    );
    assert!(reply.body["nextRunAt"].as_i64().unwrap() > now_millis());
    assert_eq!(reply.body["input"], json!({"a": 1}));

    let reply = api
        .json(
            Method::PATCH,
            &format!("/api/v1/jobs/{id}"),
            &json!({"schedule": null, "enabled": false}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["schedule"], Value::Null);
    assert_eq!(reply.body["nextRunAt"], Value::Null);
    assert_eq!(
        api.get(&format!("/api/v1/jobs/{id}")).await.body["enabled"],
        false
    );

    for name in ["b", "c"] {
        api.create_job(json!({"name": name, "module": "fake", "job": "work"}))
            .await;
    }
    let first = api.get("/api/v1/jobs?limit=2").await.body;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = api
        .get(&format!("/api/v1/jobs?limit=2&cursor={cursor}"))
        .await
        .body;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["nextCursor"], Value::Null);

    let reply = api
        .call(Method::DELETE, &format!("/api/v1/jobs/{id}"))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["error"]["details"]["resource"], "job");
}

#[tokio::test]
async fn bad_job_definitions_name_the_field_with_400_or_422() {
    let api = api().await;
    api.install_fake("1.0.0").await;
    let base = json!({"name": "j", "module": "fake", "job": "work"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let cases = [
        (
            with(json!({"schedule": "every hour"})),
            StatusCode::BAD_REQUEST,
            "schedule",
            "every hour",
        ),
        (
            with(json!({"module": "ghost"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "module",
            "ghost",
        ),
        (
            with(json!({"job": "play"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "job",
            "work",
        ),
        (
            with(json!({"fuel": u64::MAX})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "fuel",
            "ceiling",
        ),
        (
            with(json!({"onEvent": "*.x"})),
            StatusCode::BAD_REQUEST,
            "onEvent",
            "pattern",
        ),
        (
            with(json!({"name": "has space"})),
            StatusCode::BAD_REQUEST,
            "name",
            "has space",
        ),
    ];
    for (body, status, field, says) in cases {
        let reply = api.json(Method::POST, "/api/v1/jobs", &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.error_field(), field, "{body}");
        assert!(reply.message().contains(says), "{}", reply.message());
    }
    api.create_job(base.clone()).await;
    let reply = api.json(Method::POST, "/api/v1/jobs", &base).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
}

// ---- job settings --------------------------------------------------------------------------

const SECRET: &str = "hunter2-api-key";

/// The sealed value stored for setting `key` of job `id`.
async fn sealed_setting(api: &TestApi, id: &str, key: &str) -> String {
    let job = api.services.get_job(id).await.unwrap();
    match job.config.get(key) {
        Some(Setting::Sealed(sealed)) => sealed.clone(),
        other => panic!("`{key}` is not a stored secret: {other:?}"),
    }
}

#[tokio::test]
async fn job_settings_show_plain_values_as_they_are_and_secrets_only_masked() {
    let api = api_with_secret_key().await;
    api.install_fake("1.0.0").await;
    let created = api
        .create_job(json!({"name": "monitor", "module": "fake", "job": "work",
            "config": {"region": "eu-west", "apiKey": {"secret": SECRET}}}))
        .await;
    let shown = json!({"apiKey": {"secret": "***"}, "region": "eu-west"});
    assert_eq!(created["config"], shown);
    let id = created["id"].as_str().unwrap().to_owned();
    let read = api.get(&format!("/api/v1/jobs/{id}")).await.body;
    let listed = api.get("/api/v1/jobs").await.body;
    assert_eq!(read["config"], shown);
    assert_eq!(listed["items"][0]["config"], shown);
    let sealed = sealed_setting(&api, &id, "apiKey").await;
    for body in [&created, &read, &listed] {
        let text = body.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(&sealed), "{text}");
    }
    let opened = api
        .services
        .open_config(&api.services.get_job(&id).await.unwrap())
        .unwrap();
    assert_eq!(opened.values["apiKey"], SECRET);
}

#[tokio::test]
async fn a_job_read_and_patched_back_with_an_edit_keeps_its_secret() {
    let api = api_with_secret_key().await;
    api.install_fake("1.0.0").await;
    let created = api
        .create_job(json!({"name": "monitor", "module": "fake", "job": "work",
            "config": {"region": "eu-west", "apiKey": {"secret": SECRET}}}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/jobs/{id}");
    let sealed = sealed_setting(&api, &id, "apiKey").await;

    let mut config = api.get(&uri).await.body["config"].clone();
    config["region"] = json!("us-east");
    let reply = api
        .json(Method::PATCH, &uri, &json!({ "config": config }))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body["config"],
        json!({"apiKey": {"secret": "***"}, "region": "us-east"})
    );
    assert_eq!(sealed_setting(&api, &id, "apiKey").await, sealed);

    // A patch without `config` leaves the settings alone.
    let reply = api
        .json(Method::PATCH, &uri, &json!({"enabled": false}))
        .await;
    assert_eq!(reply.body["config"]["region"], "us-east");

    // The mask keeps only a secret that exists.
    let reply = api
        .json(
            Method::PATCH,
            &uri,
            &json!({"config": {"region": {"secret": "***"}}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_field(), "config.region");

    // A new value replaces the secret; settings left out are removed.
    let reply = api
        .json(
            Method::PATCH,
            &uri,
            &json!({"config": {"apiKey": {"secret": "rotated-key-2"}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["config"], json!({"apiKey": {"secret": "***"}}));
    assert_ne!(sealed_setting(&api, &id, "apiKey").await, sealed);
    let reply = api.json(Method::PATCH, &uri, &json!({"config": {}})).await;
    assert_eq!(reply.body["config"], json!({}));
}

#[tokio::test]
async fn bad_settings_are_refused_naming_the_setting_without_quoting_its_value() {
    let api = api_with_secret_key().await;
    api.install_fake("1.0.0").await;
    let job =
        |config: Value| json!({"name": "j", "module": "fake", "job": "work", "config": config});
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (
            json!({"port": 8080}),
            StatusCode::BAD_REQUEST,
            "config.port",
        ),
        (json!({"on": true}), StatusCode::BAD_REQUEST, "config.on"),
        (
            json!({"pin": {"secret": 987_654}}),
            StatusCode::BAD_REQUEST,
            "config.pin",
        ),
        (
            json!({"x": {"value": "v"}}),
            StatusCode::BAD_REQUEST,
            "config.x",
        ),
        (
            json!({"has space": "v"}),
            StatusCode::BAD_REQUEST,
            "config.has space",
        ),
        (
            json!({"big": "x".repeat(64 * 1024 + 1)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.big",
        ),
        (
            Value::Object(many),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config",
        ),
        (
            json!({"apiKey": {"secret": "***"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.apiKey",
        ),
    ];
    for (config, status, field) in cases {
        let reply = api.json(Method::POST, "/api/v1/jobs", &job(config)).await;
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.error_field(), field, "{}", reply.body);
        assert!(!reply.message().contains("987654"), "{}", reply.message());
        assert!(reply.message().len() < 300, "{}", reply.message());
    }
    let reply = api
        .json(Method::POST, "/api/v1/jobs", &job(json!({"port": 8080})))
        .await;
    assert!(
        reply.message().contains("is a string"),
        "{}",
        reply.message()
    );
}

#[tokio::test]
async fn a_server_without_a_secret_key_takes_plain_settings_and_refuses_secrets() {
    let api = api().await;
    api.install_fake("1.0.0").await;
    let reply = api
        .json(
            Method::POST,
            "/api/v1/jobs",
            &json!({"name": "j", "module": "fake", "job": "work",
                "config": {"region": "eu", "apiKey": {"secret": SECRET}}}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code(), "unprocessable");
    assert_eq!(reply.error_field(), "config.apiKey");
    assert!(
        reply.message().contains("RUNCELL_SECRET_KEY"),
        "{}",
        reply.message()
    );
    assert!(!reply.message().contains(SECRET));
    let created = api
        .create_job(json!({"name": "j", "module": "fake", "job": "work",
            "config": {"region": "eu"}}))
        .await;
    assert_eq!(created["config"], json!({"region": "eu"}));
}

// ---- executions ----------------------------------------------------------------------------

#[tokio::test]
async fn execute_queues_one_run_with_or_without_a_body() {
    let api = api().await;
    let job = api.fake_job("manual").await;
    let reply = api
        .call(Method::POST, &format!("/api/v1/jobs/{job}/execute"))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.body["status"], "QUEUED");
    let first = reply.body["executionId"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/executions/{first}")
    );
    let reply = api
        .json(
            Method::POST,
            &format!("/api/v1/jobs/{job}/execute"),
            &json!({"input": {"x": 1}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let second = reply.body["executionId"].as_str().unwrap().to_owned();
    let execution = api.get(&format!("/api/v1/executions/{second}")).await.body;
    assert_eq!(execution["status"], "QUEUED");
    assert_eq!(execution["input"], json!({"x": 1}));
    assert_eq!(execution["trigger"], "manual");
    assert_eq!(execution["attempt"], 1);

    let reply = api
        .json(
            Method::POST,
            &format!("/api/v1/jobs/{job}/execute"),
            &json!({"inptu": 1}),
        )
        .await;
    assert_eq!(reply.error_field(), "inptu");
    let reply = api.call(Method::POST, "/api/v1/jobs/ghost/execute").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    api.call(Method::POST, "/api/v1/modules/fake/disable").await;
    let reply = api
        .call(Method::POST, &format!("/api/v1/jobs/{job}/execute"))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.message().contains("disabled"), "{}", reply.message());
}

#[tokio::test]
async fn execute_bulk_takes_inputs_or_a_count_but_not_both() {
    let api = api().await;
    let job = api.fake_job("bulk").await;
    let uri = format!("/api/v1/jobs/{job}/execute-bulk");
    let reply = api.json(Method::POST, &uri, &json!({"count": 3})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["count"], 3);
    assert_eq!(reply.body["executionIds"].as_array().unwrap().len(), 3);
    let reply = api
        .json(Method::POST, &uri, &json!({"inputs": [{"a": 1}, null]}))
        .await;
    assert_eq!(reply.body["count"], 2);

    let reply = api
        .json(Method::POST, &uri, &json!({"inputs": [1], "count": 1}))
        .await;
    assert_eq!(
        (reply.status, reply.error_field()),
        (StatusCode::BAD_REQUEST, "inputs")
    );
    let reply = api.json(Method::POST, &uri, &json!({})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = api.json(Method::POST, &uri, &json!({"count": 0})).await;
    assert_eq!(
        (reply.status, reply.error_field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "count")
    );
    let reply = api.json(Method::POST, &uri, &json!({"inputs": []})).await;
    assert_eq!(
        (reply.status, reply.error_field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "inputs")
    );

    let listed = api
        .get(&format!("/api/v1/executions?jobId={job}&limit=500"))
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 5);
}

impl TestApi {
    /// POSTs `body` to `uri` with these `Idempotency-Key` header values (none: no header).
    async fn keyed(&self, uri: &str, keys: &[&[u8]], body: &Value) -> Reply {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        for key in keys {
            request = request.header("idempotency-key", *key);
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }
}

fn replayed(reply: &Reply) -> bool {
    reply
        .headers
        .get("idempotent-replayed")
        .map(|v| v.as_bytes())
        == Some(b"true".as_slice())
}

#[tokio::test]
async fn a_trigger_retried_under_its_idempotency_key_creates_nothing_and_answers_the_same() {
    let api = api().await;
    let job = api.fake_job("keyed").await;
    let bulk = format!("/api/v1/jobs/{job}/execute-bulk");
    let first = api.keyed(&bulk, &[b"bulk-1"], &json!({"count": 3})).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert!(!replayed(&first));
    // The same request again, spaced differently, even in the quoted form of the key.
    let again = api
        .keyed(
            &bulk,
            &[b"\"bulk-1\""],
            &json!({"inputs": [null, null, null]}),
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert!(replayed(&again));
    // Another request under the key is refused.
    let other = api.keyed(&bulk, &[b"bulk-1"], &json!({"count": 4})).await;
    assert_eq!(
        (other.status, other.error_field()),
        (StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key"),
        "{}",
        other.body
    );
    assert!(other.message().contains("new key"), "{}", other.message());

    // One run, the same: same id, same `Location`.
    let execute = format!("/api/v1/jobs/{job}/execute");
    let input = json!({"input": {"n": 1}});
    let first = api.keyed(&execute, &[b"one-1"], &input).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = api.keyed(&execute, &[b"one-1"], &input).await;
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers[header::LOCATION],
        first.headers[header::LOCATION]
    );
    assert!(replayed(&again));
    let other = api
        .keyed(&execute, &[b"one-1"], &json!({"input": {"n": 2}}))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Keys are the client's: another key is another request.
    let fresh = api.keyed(&execute, &[b"one-2"], &input).await;
    assert_ne!(fresh.body["executionId"], first.body["executionId"]);

    let listed = api
        .get(&format!("/api/v1/executions?jobId={job}&limit=500"))
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused_before_anything_is_created() {
    let api = api().await;
    let job = api.fake_job("malformed").await;
    let uri = format!("/api/v1/jobs/{job}/execute-bulk");
    let too_long = vec![b'k'; 256];
    let malformed: [&[&[u8]]; 6] = [
        &[b""],
        &[b"\"\""],
        &[b"with space"],
        &[b"quote\"inside"],
        &[too_long.as_slice()],
        &[b"twice", b"twice"],
    ];
    for keys in malformed {
        let reply = api.keyed(&uri, keys, &json!({"count": 1})).await;
        assert_eq!(
            (reply.status, reply.error_field()),
            (StatusCode::BAD_REQUEST, "Idempotency-Key"),
            "{keys:?}: {}",
            reply.body
        );
    }
    // Non-ASCII bytes cannot even be a header value `http` accepts as text.
    let reply = api
        .keyed(&uri, &["clé".as_bytes()], &json!({"count": 1}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let longest = vec![b'k'; 255];
    let reply = api
        .keyed(&uri, &[longest.as_slice()], &json!({"count": 1}))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let listed = api
        .get(&format!("/api/v1/executions?jobId={job}&limit=500"))
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn executions_filter_by_status_and_a_bad_status_lists_the_allowed_ones() {
    let api = api().await;
    let job = api.fake_job("filtered").await;
    let done = api.execute(&job).await;
    let waiting = api.execute(&job).await;
    api.complete(&done, vec![]).await;
    let ids = |reply: Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(api.get("/api/v1/executions?status=COMPLETED").await),
        std::slice::from_ref(&done)
    );
    assert_eq!(
        ids(api.get("/api/v1/executions?status=queued").await),
        [waiting]
    );
    let reply = api.get("/api/v1/executions?status=DONE").await;
    assert_eq!(
        (reply.status, reply.error_field()),
        (StatusCode::BAD_REQUEST, "status")
    );
    assert!(reply.message().contains("TIMED_OUT"), "{}", reply.message());
    assert_eq!(
        reply.body["error"]["details"]["allowed"]
            .as_array()
            .unwrap()
            .len(),
        6
    );

    let execution = api.get(&format!("/api/v1/executions/{done}")).await.body;
    assert_eq!(execution["status"], "COMPLETED");
    assert_eq!(execution["result"], json!({"ok": true}));
    assert_eq!(execution["fuelConsumed"], 10);
    assert_eq!(execution["cpuTimeMs"], 2.5);
    assert_eq!(execution["memoryPeakBytes"], 65_536);
    assert!(execution["durationMs"].is_number());
}

#[tokio::test]
async fn cancelling_a_queued_execution_ends_it_and_cancelling_again_is_409() {
    let api = api().await;
    let job = api.fake_job("cancelled").await;
    let id = api.execute(&job).await;
    let reply = api
        .call(Method::POST, &format!("/api/v1/executions/{id}/cancel"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "CANCELLED");
    let reply = api
        .call(Method::POST, &format!("/api/v1/executions/{id}/cancel"))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.message().contains("CANCELLED"), "{}", reply.message());
    let reply = api
        .call(Method::POST, "/api/v1/executions/ghost/cancel")
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn logs_are_paged_by_seq() {
    let api = api().await;
    let job = api.fake_job("chatty").await;
    let id = api.execute(&job).await;
    api.complete(&id, (0..5).map(|n| line(n, &format!("line {n}"))).collect())
        .await;
    let reply = api.get(&format!("/api/v1/executions/{id}/logs")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        reply.body["items"][0],
        json!({"seq": 0, "ts": 1_700_000_000_000_u64, "level": "info",
               "message": "line 0", "fields": {"n": 0}})
    );
    assert_eq!(reply.body["nextAfter"], Value::Null);
    let page = api
        .get(&format!("/api/v1/executions/{id}/logs?after=1&limit=2"))
        .await
        .body;
    let seqs: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert_eq!(page["nextAfter"], 3);
    let reply = api.get("/api/v1/executions/ghost/logs").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

// ---- following logs ----------------------------------------------------------------------

/// One server-sent event: (event name, data as JSON).
type Sse = Vec<(String, Value)>;

fn parse_sse(text: &str) -> Sse {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            Some((name?, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

fn messages(events: &Sse) -> Vec<String> {
    events
        .iter()
        .filter(|(name, _)| name == "log")
        .map(|(_, line)| line["message"].as_str().unwrap().to_owned())
        .collect()
}

impl TestApi {
    /// Starts following; returns the body once the stream closes (or panics after 10 s).
    fn follow(&self, id: &str, query: &str) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let router = self.router.clone();
        let uri = format!("/api/v1/executions/{id}/logs?follow=true{query}");
        let bearer = format!("Bearer {}", self.token);
        tokio::spawn(async move {
            let request = Request::get(uri)
                .header(header::AUTHORIZATION, bearer)
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = tokio::time::timeout(
                Duration::from_secs(10),
                to_bytes(response.into_body(), usize::MAX),
            )
            .await
            .expect("the stream ends")
            .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        })
    }
}

#[tokio::test]
async fn following_a_finished_execution_sends_its_stored_lines_then_end() {
    let api = api().await;
    let job = api.fake_job("finished").await;
    let id = api.execute(&job).await;
    api.complete(
        &id,
        (0..3).map(|n| line(n, &format!("stored {n}"))).collect(),
    )
    .await;
    let (status, body) = api.follow(&id, "").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let events = parse_sse(&body);
    assert_eq!(messages(&events), ["stored 0", "stored 1", "stored 2"]);
    assert_eq!(
        events.last().unwrap(),
        &("end".to_owned(), json!({"status": "COMPLETED"}))
    );
    let (_, body) = api.follow(&id, "&after=1").await.unwrap();
    assert_eq!(messages(&parse_sse(&body)), ["stored 2"]);
    assert_eq!(
        api.get("/api/v1/executions/ghost/logs?follow=true")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn following_a_running_execution_streams_backlog_and_live_lines_once_each() {
    let api = api().await;
    let job = api.fake_job("running").await;
    let id = api.execute(&job).await;
    let now = now_millis();
    api.services
        .store
        .claim_executions(std::slice::from_ref(&id), "test-node", now, now + 60_000)
        .await
        .unwrap();
    let observer = api.services.logs.start(&id);
    let lines: Vec<LogEntry> = (0..4).map(|n| line(n, &format!("live {n}"))).collect();
    observer(&lines[0]);
    observer(&lines[1]);
    let follower = api.follow(&id, "");
    tokio::time::sleep(Duration::from_millis(100)).await;
    observer(&lines[2]);
    observer(&lines[3]);
    api.record(&id, lines.clone()).await;
    api.services.logs.finish(&id, ExecutionStatus::Completed);
    let (status, body) = follower.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let events = parse_sse(&body);
    assert_eq!(messages(&events), ["live 0", "live 1", "live 2", "live 3"]);
    assert_eq!(events.last().unwrap().0, "end");
}

#[tokio::test]
async fn a_follower_that_misses_the_end_message_learns_it_from_the_store() {
    let api = api().await;
    let job = api.fake_job("elsewhere").await;
    let id = api.execute(&job).await;
    let follower = api.follow(&id, "");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Run "on another node": recorded in the store, nothing published in this process.
    api.complete(&id, vec![line(0, "from the store")]).await;
    let (_, body) = follower.await.unwrap();
    let events = parse_sse(&body);
    assert_eq!(messages(&events), ["from the store"]);
    assert_eq!(
        events.last().unwrap(),
        &("end".to_owned(), json!({"status": "COMPLETED"}))
    );
}

#[tokio::test]
async fn a_follower_of_a_queued_execution_sees_its_cancellation() {
    let api = api().await;
    let job = api.fake_job("to-cancel").await;
    let id = api.execute(&job).await;
    let follower = api.follow(&id, "");
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.call(Method::POST, &format!("/api/v1/executions/{id}/cancel"))
        .await;
    let (_, body) = tokio::time::timeout(Duration::from_millis(900), follower)
        .await
        .expect("the end arrives before the store poll")
        .unwrap();
    assert_eq!(
        parse_sse(&body),
        [("end".to_owned(), json!({"status": "CANCELLED"}))]
    );
}

// ---- events ------------------------------------------------------------------------------

#[tokio::test]
async fn published_events_trigger_subscribed_jobs_and_are_listed_by_topic() {
    let api = api().await;
    api.install_fake("1.0.0").await;
    let job = api
        .create_job(
            json!({"name": "on-report", "module": "fake", "job": "work", "onEvent": "report.*"}),
        )
        .await;
    let reply = api
        .json(
            Method::POST,
            "/api/v1/events",
            &json!({"topic": "report.generated", "payload": {"records": 2}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let event_id = reply.body["eventId"].as_str().unwrap().to_owned();
    let triggered = reply.body["triggeredExecutions"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(triggered.len(), 1);
    let execution = api
        .get(&format!(
            "/api/v1/executions/{}",
            triggered[0].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(execution["jobId"], job["id"]);
    assert_eq!(execution["trigger"], "event");
    assert_eq!(execution["input"]["id"], event_id.as_str());
    assert_eq!(execution["input"]["payload"], json!({"records": 2}));

    let reply = api
        .json(
            Method::POST,
            "/api/v1/events",
            &json!({"topic": "other.thing"}),
        )
        .await;
    assert_eq!(reply.body["triggeredExecutions"], json!([]));
    let listed = api.get("/api/v1/events?topic=report.generated").await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["source"], "api");
    assert_eq!(
        api.get("/api/v1/events").await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let reply = api
        .json(
            Method::POST,
            "/api/v1/events",
            &json!({"topic": "no spaces"}),
        )
        .await;
    assert_eq!(
        (reply.status, reply.error_field()),
        (StatusCode::BAD_REQUEST, "topic")
    );
    let reply = api
        .json(Method::POST, "/api/v1/events", &json!({"payload": 1}))
        .await;
    assert_eq!(
        (reply.status, reply.error_field()),
        (StatusCode::BAD_REQUEST, "topic")
    );
}

#[tokio::test]
async fn shutdown_ends_open_log_streams_and_makes_the_server_unready() {
    let api = api().await;
    let job = api.fake_job("never-runs").await;
    let id = api.execute(&job).await;
    let follower = api.follow(&id, "");
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.readiness.begin_shutdown();
    let (status, body) = tokio::time::timeout(Duration::from_millis(900), follower)
        .await
        .expect("the stream closes at once")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(parse_sse(&body).is_empty(), "{body}");
    let reply = api.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.body["error"]["details"]["checks"]["workers"],
        "stopped"
    );
}

#[tokio::test]
async fn a_version_asking_for_more_than_was_approved_waits_for_a_new_approval() {
    let api = api().await;
    let mut v1 = manifest("1.0.0");
    v1.capabilities.key_value = true;
    let store = &api.services.store;
    store
        .install_module_version(&v1, "hash-1", b"not wasm", &by_admin(), now_millis())
        .await
        .unwrap();
    let reply = api.get("/api/v1/modules/fake").await;
    assert_eq!(reply.body["awaitingApproval"], json!(["key-value storage"]));
    let approved = api
        .call(Method::POST, "/api/v1/modules/fake/capabilities/approve")
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.body);
    assert_eq!(approved.body["awaitingApproval"], json!([]));

    // Asking for less is fine.
    let v2 = manifest("2.0.0");
    store
        .install_module_version(&v2, "hash-2", b"not wasm", &by_admin(), now_millis())
        .await
        .unwrap();
    assert_eq!(
        api.get("/api/v1/modules/fake").await.body["awaitingApproval"],
        json!([])
    );

    // Asking for more blocks the module's jobs until approved again.
    let mut v3 = manifest("3.0.0");
    v3.capabilities.key_value = true;
    v3.capabilities.outbound_hosts = vec!["api.example.com".to_owned()];
    store
        .install_module_version(&v3, "hash-3", b"not wasm", &by_admin(), now_millis())
        .await
        .unwrap();
    api.services.modules.invalidate("fake");
    let blocked = api.services.modules.resolve("fake").await;
    assert!(
        matches!(
            &blocked,
            Err(crate::services::modules::Unrunnable::Unapproved { missing, .. })
                if missing == &["outbound host `api.example.com`".to_owned()]
        ),
        "{blocked:?}"
    );
    let reply = api.get("/api/v1/modules/fake").await;
    assert_eq!(
        reply.body["awaitingApproval"],
        json!(["outbound host `api.example.com`"])
    );
    assert_eq!(reply.body["approvedCapabilities"]["keyValue"], true);
}

#[tokio::test]
async fn an_admin_grants_fewer_or_other_outbound_hosts_than_a_module_asks_for() {
    let api = api().await;
    let install = |version: &str, hosts: &[&str]| {
        let mut manifest = manifest(version);
        manifest.capabilities.outbound_hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        let store = api.services.store.clone();
        let hash = format!("hash-{version}");
        async move {
            store
                .install_module_version(&manifest, &hash, b"not wasm", &by_admin(), now_millis())
                .await
                .unwrap()
        }
    };
    install("1", &["status.example.com", "*.example.org"]).await;
    let approve = "/api/v1/modules/fake/capabilities/approve";

    // Bad grants are refused by the manifest's rules, naming the entry; nothing changes.
    for (hosts, names) in [
        (
            json!(["status.example.com", "api.*.com"]),
            "`api.*.com`: `*` may only",
        ),
        (json!(["ok.example.com", " "]), "entry ` ` is empty"),
        (json!(["example.com:99999"]), "`99999` is not a port"),
    ] {
        let refused = api
            .json(Method::POST, approve, &json!({"outboundHosts": hosts}))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(refused.error_field(), "outboundHosts");
        assert!(refused.message().contains(names), "{}", refused.body);
    }
    let too_many: Vec<String> = (0..65).map(|n| format!("h{n}.example.com")).collect();
    let refused = api
        .json(Method::POST, approve, &json!({"outboundHosts": too_many}))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    let unknown = api
        .json(Method::POST, approve, &json!({"hosts": ["a.example.com"]}))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.body);
    let untouched = api.get("/api/v1/modules/fake").await;
    assert_eq!(
        untouched.body["awaitingApproval"],
        json!([
            "outbound host `status.example.com`",
            "outbound host `*.example.org`"
        ])
    );

    // Narrowed and extended at once: requested against granted.
    let granted = api
        .json(
            Method::POST,
            approve,
            &json!({"outboundHosts": ["status.example.com", "hooks.slack.com"]}),
        )
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.body);
    assert_eq!(granted.body["awaitingApproval"], json!([]));
    let expected = json!({
        "requested": ["status.example.com", "*.example.org"],
        "granted": ["status.example.com", "hooks.slack.com"],
        "extensions": ["hooks.slack.com"],
        "withheld": ["*.example.org"],
    });
    assert_eq!(granted.body["outboundHosts"], expected);
    assert_eq!(
        api.get("/api/v1/modules/fake").await.body["outboundHosts"],
        expected
    );
    let audit = api.get("/api/v1/audit").await.body.to_string();
    assert!(
        audit.contains(r#""grantedOutboundHosts":["status.example.com","hooks.slack.com"]"#),
        "{audit}"
    );
    assert!(
        audit.contains(r#""outboundExtensions":["hooks.slack.com"]"#),
        "{audit}"
    );

    // A new version asking for what was decided on (the withheld host, the extension)
    // runs under the same grant; one asking for a host never seen waits.
    install("2", &["www.example.org", "hooks.slack.com"]).await;
    let decided = api.get("/api/v1/modules/fake").await.body;
    assert_eq!(decided["awaitingApproval"], json!([]), "{decided}");
    assert_eq!(
        decided["outboundHosts"]["granted"],
        json!(["status.example.com", "hooks.slack.com"])
    );
    assert_eq!(
        decided["outboundHosts"]["withheld"],
        json!(["www.example.org"])
    );
    install("3", &["status.example.com", "new.example.net"]).await;
    assert_eq!(
        api.get("/api/v1/modules/fake").await.body["awaitingApproval"],
        json!(["outbound host `new.example.net`"])
    );

    // Approving without a body grants the new host and keeps the admin's grant.
    let kept = api.call(Method::POST, approve).await;
    assert_eq!(kept.status, StatusCode::OK, "{}", kept.body);
    assert_eq!(kept.body["awaitingApproval"], json!([]));
    assert_eq!(
        kept.body["outboundHosts"]["granted"],
        json!(["status.example.com", "hooks.slack.com", "new.example.net"])
    );

    // A grant equal to the request is the request again.
    let plain = api
        .json(
            Method::POST,
            approve,
            &json!({"outboundHosts": ["new.example.net", "STATUS.example.com"]}),
        )
        .await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.body);
    assert_eq!(
        plain.body["outboundHosts"],
        json!({
            "requested": ["status.example.com", "new.example.net"],
            "granted": ["status.example.com", "new.example.net"],
            "extensions": [],
            "withheld": [],
        })
    );
}

// ---- awaiting a run ----------------------------------------------------------------------

/// The id of the queued run of `job`, once there is one.
async fn queued_run(api: &TestApi, job: &str) -> String {
    let filter = ExecutionFilter {
        job_id: Some(job.to_owned()),
        status: Some(ExecutionStatus::Queued),
    };
    for _ in 0..500 {
        let page = api
            .services
            .list_executions(&filter, None, 1)
            .await
            .unwrap();
        if let Some(execution) = page.items.first() {
            return execution.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no queued run of {job}");
}

#[tokio::test]
async fn an_awaited_run_answers_200_once_final_and_202_with_its_state_when_the_wait_ends_first() {
    let api = api().await;
    let job = api.fake_job("awaited").await;

    // It ends meanwhile (the test plays the worker): the final execution, as GET shows it.
    let execute = format!("/api/v1/jobs/{job}/execute?wait=10s");
    let (reply, ()) = tokio::join!(api.call(Method::POST, &execute), async {
        let id = queued_run(&api, &job).await;
        api.complete(&id, Vec::new()).await;
        api.services.logs.finish(&id, ExecutionStatus::Completed);
    });
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "COMPLETED");
    let id = reply.body["id"].as_str().unwrap();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/executions/{id}").as_str()
    );
    let shown = api.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(reply.body, shown.body);

    // Nobody runs it: the wait ends first, and 202 says so, with the run as it stands.
    let asked = std::time::Instant::now();
    let reply = api
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{job}/execute?wait=300ms"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "QUEUED", "{}", reply.body);
    assert_eq!(
        reply.body["job"], "work",
        "the whole execution: {}",
        reply.body
    );
    assert!(asked.elapsed() >= Duration::from_millis(300));
    let id = reply.body["id"].as_str().unwrap();
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/api/v1/executions/{id}").as_str()
    );

    // `wait=0s` answers at once; no wait at all answers as ever.
    let now = api
        .call(Method::POST, &format!("/api/v1/jobs/{job}/execute?wait=0s"))
        .await;
    assert_eq!(now.status, StatusCode::ACCEPTED, "{}", now.body);
    assert_eq!(now.body["status"], "QUEUED");
    let plain = api
        .call(Method::POST, &format!("/api/v1/jobs/{job}/execute"))
        .await;
    assert_eq!(plain.status, StatusCode::ACCEPTED, "{}", plain.body);
    assert!(plain.body["executionId"].is_string(), "{}", plain.body);
    assert_eq!(
        api.services.logs.channel_count(),
        0,
        "no waiter left behind"
    );
}

#[tokio::test]
async fn a_bad_or_too_long_wait_is_refused_before_a_run_is_created() {
    let api = api().await;
    let job = api.fake_job("never").await;
    for (wait, status, says) in [
        (
            "30",
            StatusCode::BAD_REQUEST,
            "wait: `30` is not a duration",
        ),
        (
            "soon",
            StatusCode::BAD_REQUEST,
            "as in `500ms`, `30s` or `2m`",
        ),
        (
            "-1s",
            StatusCode::BAD_REQUEST,
            "wait: `-1s` is not a duration",
        ),
        (
            "6m",
            StatusCode::UNPROCESSABLE_ENTITY,
            "longer than the longest wait, 5m",
        ),
        (
            "301s",
            StatusCode::UNPROCESSABLE_ENTITY,
            "longer than the longest wait, 5m",
        ),
    ] {
        let reply = api
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job}/execute?wait={wait}"),
            )
            .await;
        assert_eq!(reply.status, status, "{wait}: {}", reply.body);
        assert_eq!(reply.error_field(), "wait");
        assert!(reply.message().contains(says), "{}", reply.body);
    }
    let filter = ExecutionFilter {
        job_id: Some(job.clone()),
        status: None,
    };
    let runs = api
        .services
        .list_executions(&filter, None, 10)
        .await
        .unwrap();
    assert!(runs.items.is_empty(), "{:?}", runs.items);
    let in_bounds = api
        .call(Method::POST, &format!("/api/v1/jobs/{job}/execute?wait=0m"))
        .await;
    assert_eq!(in_bounds.status, StatusCode::ACCEPTED, "{}", in_bounds.body);
}

#[tokio::test]
async fn a_waiting_request_answers_with_the_run_as_it_stands_when_the_server_shuts_down() {
    let api = api().await;
    let job = api.fake_job("stopping").await;
    let asked = std::time::Instant::now();
    let execute = format!("/api/v1/jobs/{job}/execute?wait=5m");
    let (reply, ()) = tokio::join!(api.call(Method::POST, &execute), async {
        queued_run(&api, &job).await;
        api.readiness.begin_shutdown();
    });
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "QUEUED");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_goes_away_while_waiting_leaves_no_waiter_behind() {
    use std::io::Write;
    let api = api().await;
    let job = api.fake_job("abandoned").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = api.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let mut client = std::net::TcpStream::connect(address).unwrap();
    let request = format!(
        "POST /api/v1/jobs/{job}/execute?wait=60s HTTP/1.1\r\nhost: {address}\r\n\
         authorization: Bearer {}\r\ncontent-length: 0\r\n\r\n",
        api.token
    );
    client.write_all(request.as_bytes()).unwrap();
    let logs = &api.services.logs;
    let channels = |count: usize| async move {
        for _ in 0..500 {
            if logs.channel_count() == count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(channels(1).await, "the request waits on the run");
    drop(client);
    assert!(channels(0).await, "the waiter went with its client");
    server.abort();
}

/// Uploads followed from a `202`: what a module upload answers when the client prefers
/// not to wait for the compilation, and what following it says on every path.
mod followed_uploads {
    use super::*;
    use crate::domain::NodeHeartbeat;
    use crate::domain::upload::UploadRecord;

    async fn upload_async(api: &TestApi, body: Vec<u8>) -> Reply {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/modules")
            .header(header::CONTENT_TYPE, "application/wasm")
            .header("prefer", "respond-async")
            .body(Body::from(body))
            .unwrap();
        api.send(request).await
    }

    /// Follows `location` until the upload is no longer compiling.
    async fn followed(api: &TestApi, location: &str) -> Value {
        for _ in 0..500 {
            let reply = api.get(location).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            if reply.body["status"] != "COMPILING" {
                return reply.body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{location} still compiling after 5 s");
    }

    #[tokio::test]
    async fn a_component_that_does_not_compile_is_answered_202_then_fails_as_the_upload_would() {
        let api = api().await;
        // A component's header, then nothing a compiler accepts.
        let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
        broken.extend_from_slice(&[0xff; 64]);
        let reply = upload_async(&api, broken.clone()).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["status"], "COMPILING");
        assert_eq!(reply.body["sizeBytes"], broken.len());
        assert_eq!(reply.headers["preference-applied"], "respond-async");
        let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
        assert_eq!(
            location,
            format!(
                "/api/v1/module-uploads/{}",
                reply.body["id"].as_str().unwrap()
            )
        );

        let upload = followed(&api, &location).await;
        assert_eq!(upload["status"], "FAILED", "{upload}");
        assert_eq!(upload["httpStatus"], 422, "{upload}");
        assert_eq!(
            upload["error"]["error"]["code"], "invalid_module",
            "{upload}"
        );
        assert!(upload["finishedAt"].is_i64(), "{upload}");
        assert!(upload["module"].is_null(), "{upload}");

        // What is not a component at all is refused at once, as before.
        let reply = upload_async(&api, b"just some text".to_vec()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert_eq!(reply.error_code(), "invalid_module");
    }

    #[tokio::test]
    async fn a_burst_of_uploads_past_what_a_node_installs_at_once_is_told_to_retry() {
        let api = api().await;
        let slots = crate::services::uploads::UPLOADS_IN_FLIGHT as u32;
        let installing = api
            .services
            .upload_slots
            .clone()
            .try_acquire_many_owned(slots)
            .unwrap();
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        component.extend_from_slice(&[0xff; 64]);
        let reply = upload_async(&api, component.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            reply.body
        );
        assert_eq!(reply.headers[header::RETRY_AFTER], "5");
        assert!(reply.message().contains("retry"), "{}", reply.message());

        drop(installing);
        let reply = upload_async(&api, component).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }

    #[tokio::test]
    async fn an_unknown_upload_is_not_found() {
        let api = api().await;
        let reply = api.get("/api/v1/module-uploads/nope").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    }

    #[tokio::test]
    async fn an_upload_whose_node_stopped_or_restarted_failed_and_says_to_upload_again() {
        let api = api().await;
        let created_at = now_millis();
        let upload = |id: &str, node: &str| UploadRecord {
            id: id.to_owned(),
            content_hash: "ab".repeat(32),
            size_bytes: 1_000,
            uploaded_by: "admin".to_owned(),
            node_id: node.to_owned(),
            created_at,
            finished: None,
        };
        let heartbeat = |node: &str, started_at, last_heartbeat_at| NodeHeartbeat {
            node_id: node.to_owned(),
            started_at,
            last_heartbeat_at,
            workers: 1,
            running: 0,
            version: "test".to_owned(),
        };
        let store = &api.services.store;
        store
            .heartbeat_node(&heartbeat("alive", created_at - 1_000, created_at))
            .await
            .unwrap();
        store
            .heartbeat_node(&heartbeat("restarted", created_at + 1, created_at + 1))
            .await
            .unwrap();
        store
            .heartbeat_node(&heartbeat(
                "silent",
                created_at - 60_000,
                created_at - 30_000,
            ))
            .await
            .unwrap();
        for (id, node) in [
            ("on-alive", "alive"),
            ("on-restarted", "restarted"),
            ("on-silent", "silent"),
            ("on-unknown", "unknown"),
        ] {
            store.create_upload(&upload(id, node)).await.unwrap();
        }

        // This process took one upload; an earlier process under the same node id, another.
        store
            .create_upload(&upload("on-this-process", "local"))
            .await
            .unwrap();
        let earlier = UploadRecord {
            created_at: api.services.started_at - 1,
            ..upload("on-an-earlier-process", "local")
        };
        store.create_upload(&earlier).await.unwrap();

        for id in ["on-alive", "on-this-process"] {
            let reply = api.get(&format!("/api/v1/module-uploads/{id}")).await;
            assert_eq!(reply.body["status"], "COMPILING", "{}", reply.body);
        }
        for (id, node) in [
            ("on-an-earlier-process", "local"),
            ("on-restarted", "restarted"),
            ("on-silent", "silent"),
            ("on-unknown", "unknown"),
        ] {
            let reply = api.get(&format!("/api/v1/module-uploads/{id}")).await;
            assert_eq!(reply.body["status"], "FAILED", "{}", reply.body);
            assert_eq!(reply.body["httpStatus"], 503, "{}", reply.body);
            let message = reply.body["error"]["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("node `{node}` stopped"))
                    && message.contains("upload the file again"),
                "{message}"
            );
        }
    }
}
