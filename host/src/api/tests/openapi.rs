//! The OpenAPI document and the reference page, checked against the router that serves
//! them: what the document lists is routed, what it says of limits is enforced, every
//! reference in it resolves, and the page loads nothing from elsewhere.

use std::collections::BTreeSet;

use utoipa::PartialSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use super::*;
use crate::api::error::ErrorCode;
use crate::api::extract::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::api::openapi::{DOCS_PATH, OPENAPI_PATH};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One operation of the document: method (lowercase), path and the operation object.
struct Operation {
    method: String,
    path: String,
    body: Value,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    fn uri(&self) -> String {
        concrete(&self.path)
    }
}

/// A documented path with every `{param}` filled with a value that names nothing.
fn concrete(path: &str) -> String {
    let mut uri = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        uri.push_str(&rest[..start]);
        uri.push_str("no-such-thing");
        rest = &rest[rest[start..]
            .find('}')
            .map_or(rest.len(), |end| start + end + 1)..];
    }
    uri.push_str(rest);
    uri
}

async fn document(api: &TestApi) -> Value {
    let reply = api.get(OPENAPI_PATH).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    reply.body
}

fn operations(document: &Value) -> Vec<Operation> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                operations.push(Operation {
                    method: method.to_owned(),
                    path: path.clone(),
                    body: operation.clone(),
                });
            }
        }
    }
    operations
}

/// Follows a local `$ref` (`#/components/...`) to what it names.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => found.push(reference),
                    _ => refs(child, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

fn method(name: &str) -> Method {
    Method::from_bytes(name.to_uppercase().as_bytes()).unwrap()
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_says_what_it_describes() {
    let api = api().await;
    let document = document(&api).await;
    let version = document["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1"), "{version}");
    assert_eq!(document["info"]["title"], "Runcell");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        document["info"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert_eq!(
        document["servers"],
        json!([{"url": "/", "description": "This server"}])
    );
    let tags: Vec<&str> = document["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| tag["name"].as_str().unwrap())
        .collect();
    for area in [
        "modules",
        "jobs",
        "executions",
        "events",
        "probes",
        "reference",
    ] {
        assert!(tags.contains(&area), "no tag {area} in {tags:?}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let api = api().await;
    let document = document(&api).await;
    let operations = operations(&document);
    assert!(
        operations.len() >= 24,
        "only {} operations",
        operations.len()
    );
    for operation in &operations {
        let reply = api.call(method(&operation.method), &operation.uri()).await;
        let unrouted = reply.status == StatusCode::METHOD_NOT_ALLOWED
            || (reply.status == StatusCode::NOT_FOUND && reply.message().starts_with("no route"));
        assert!(
            !unrouted,
            "{} is documented but not routed: {} {}",
            operation.name(),
            reply.status,
            reply.body
        );
    }
}

#[tokio::test]
async fn no_method_is_routed_on_a_documented_path_without_being_documented() {
    let api = api().await;
    let document = document(&api).await;
    for (path, item) in document["paths"].as_object().unwrap() {
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        // HEAD is served wherever GET is, by axum itself.
        for other in ["get", "put", "post", "delete", "patch"] {
            if documented.contains(&other) {
                continue;
            }
            let reply = api.call(method(other), &concrete(path)).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{} {path} answers but is not documented: {}",
                other.to_uppercase(),
                reply.body
            );
        }
    }
}

#[tokio::test]
async fn every_operation_documents_its_success_and_its_errors_in_the_one_error_shape() {
    let api = api().await;
    let document = document(&api).await;
    let declared_tags: BTreeSet<&str> = document["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| tag["name"].as_str().unwrap())
        .collect();
    let mut operation_ids = BTreeSet::new();
    for operation in operations(&document) {
        let name = operation.name();
        let op = &operation.body;
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{name} has no summary"
        );
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        assert!(
            operation_ids.insert(id.clone()),
            "{name}: operationId `{id}` is taken"
        );
        let tags = op["tags"].as_array().unwrap();
        assert!(!tags.is_empty(), "{name} has no tag");
        for tag in tags {
            assert!(
                declared_tags.contains(tag.as_str().unwrap()),
                "{name}: tag {tag} is not declared"
            );
        }
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|status| status.starts_with('2')),
            "{name} documents no success"
        );
        let errors: Vec<&String> = responses
            .keys()
            .filter(|status| status.starts_with('4') || status.starts_with('5'))
            .collect();
        assert!(!errors.is_empty(), "{name} documents no error");
        for status in errors {
            let mut response = &responses[status];
            if let Some(reference) = response["$ref"].as_str() {
                response = resolve(&document, reference).unwrap();
            }
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{name} {status} is not in the error shape"
            );
        }
    }
}

#[tokio::test]
async fn every_reference_in_the_document_resolves() {
    let api = api().await;
    let document = document(&api).await;
    let mut found = Vec::new();
    refs(&document, &mut found);
    assert!(found.len() > 50, "only {} references", found.len());
    for reference in found {
        assert!(
            reference.starts_with("#/components/"),
            "{reference} points outside the document"
        );
        assert!(
            resolve(&document, reference).is_some(),
            "{reference} resolves to nothing"
        );
    }
}

#[tokio::test]
async fn only_the_probes_and_the_reference_need_no_token() {
    let api = api().await;
    let document = document(&api).await;
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["type"],
        "http"
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["bearerFormat"],
        "JWT"
    );
    assert_eq!(document["security"], json!([{"bearer": []}]));
    let mut public = BTreeSet::new();
    for operation in operations(&document) {
        match operation.body.get("security") {
            Some(security) => {
                assert_eq!(security, &json!([]), "{}", operation.name());
                public.insert(operation.name());
            }
            None => assert!(
                operation.body["responses"].get("401").is_some(),
                "{} needs a token but documents no 401",
                operation.name()
            ),
        }
    }
    let expected: BTreeSet<String> = [
        "GET /healthz".to_owned(),
        "GET /readyz".to_owned(),
        format!("GET {OPENAPI_PATH}"),
        format!("GET {DOCS_PATH}"),
        "POST /api/v1/auth/login".to_owned(),
        "POST /api/v1/auth/refresh".to_owned(),
    ]
    .into();
    assert_eq!(public, expected);
}

#[tokio::test]
async fn module_uploads_document_raw_and_multipart_bodies() {
    let api = api().await;
    let document = document(&api).await;
    let body = &document["paths"]["/api/v1/modules"]["post"]["requestBody"];
    let types: BTreeSet<&str> = body["content"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "application/wasm",
            "application/octet-stream",
            "multipart/form-data"
        ])
    );
    let form = resolve(
        &document,
        body["content"]["multipart/form-data"]["schema"]["$ref"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(form["required"], json!(["module"]));
}

#[tokio::test]
async fn documented_bounds_of_query_parameters_are_the_enforced_ones() {
    let api = api().await;
    let document = document(&api).await;
    let mut checked = 0;
    for operation in operations(&document) {
        if operation.method != "get" {
            continue;
        }
        for param in operation.body["parameters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = param["name"].as_str().unwrap();
            let Some(max) = param["schema"]["maximum"].as_u64() else {
                continue;
            };
            if name == "limit" && operation.path != "/api/v1/executions/{id}/logs" {
                assert_eq!(max, u64::from(MAX_PAGE_SIZE), "{}", operation.name());
                assert_eq!(
                    param["schema"]["default"],
                    json!(DEFAULT_PAGE_SIZE),
                    "{}",
                    operation.name()
                );
            }
            let uri = operation.uri();
            let at_max = api.get(&format!("{uri}?{name}={max}")).await;
            assert_ne!(
                at_max.status,
                StatusCode::BAD_REQUEST,
                "{}: {}",
                operation.name(),
                at_max.body
            );
            let over = api.get(&format!("{uri}?{name}={}", max + 1)).await;
            assert_eq!(
                over.status,
                StatusCode::BAD_REQUEST,
                "{}: {}",
                operation.name(),
                over.body
            );
            assert_eq!(over.error_field(), name);
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} bounded parameters");
}

#[test]
fn the_documented_error_codes_are_the_ones_sent() {
    const ALL: [ErrorCode; 19] = [
        ErrorCode::MalformedJson,
        ErrorCode::InvalidField,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Unprocessable,
        ErrorCode::InvalidModule,
        ErrorCode::TooManyRequests,
        ErrorCode::ModuleFailed,
        ErrorCode::ModuleBusy,
        ErrorCode::ModuleTimedOut,
        ErrorCode::Unavailable,
        ErrorCode::Overloaded,
        ErrorCode::NotReady,
        ErrorCode::Internal,
    ];
    let RefOr::T(Schema::Object(schema)) = ErrorCode::schema() else {
        panic!("ErrorCode is not an enum schema");
    };
    let documented: Vec<Value> = schema.enum_values.unwrap_or_default();
    let sent: Vec<Value> = ALL.iter().map(|code| json!(code.as_str())).collect();
    // The schema lists every variant, so a code missing from ALL shows up here too.
    assert_eq!(documented, sent);
}

#[tokio::test]
async fn the_docs_page_is_html_that_loads_nothing_from_elsewhere() {
    let api = api().await;
    let reply = api.get(DOCS_PATH).await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let csp = reply.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let Value::String(page) = reply.body else {
        panic!("the page is not text");
    };
    assert!(
        page.contains(OPENAPI_PATH),
        "the page does not read the document"
    );
    for scheme in ["http://", "https://"] {
        assert!(!page.contains(scheme), "the page names a URL with {scheme}");
    }
    for attribute in ["src=", "href="] {
        for (at, _) in page.match_indices(attribute) {
            let value = page[at + attribute.len()..].trim_start_matches(['"', '\'']);
            assert!(
                !value.starts_with("//") && !value.contains("://"),
                "external {attribute} at byte {at}"
            );
        }
    }
}
