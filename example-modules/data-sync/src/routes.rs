//! The HTTP face of `data-sync`, served under `/m/data-sync/`: `GET /status` reports the
//! sync cursor and how many records are stored, read from the same keys `hourly-sync`
//! writes. It only reads; every change goes through the jobs.

use runcell_sdk::http::Method;
use runcell_sdk::kv;
use runcell_sdk::routes::{Request, Response};

use crate::logic::{Cursor, SyncStatus};
use crate::{CURSOR_KEY, MAX_REPORTED_RECORDS, RECORD_PREFIX};

/// Answers every request to the module's routes.
pub fn serve(request: Request) -> Result<Response, Response> {
    match request.segments().as_slice() {
        ["status"] => match request.method() {
            Method::Get => status(),
            _ => Err(Response::method_not_allowed(&[Method::Get])),
        },
        _ => Err(Response::not_found()),
    }
}

/// `GET /status`: the cursor (`null` before the first sync) and the record count.
fn status() -> Result<Response, Response> {
    let cursor: Option<Cursor> = kv::get(CURSOR_KEY)?;
    let listed = kv::list_keys(RECORD_PREFIX, MAX_REPORTED_RECORDS)?.len();
    Ok(Response::json(
        200,
        &SyncStatus::new(cursor, listed, MAX_REPORTED_RECORDS),
    ))
}

#[cfg(test)]
mod tests {
    use runcell_sdk::routes::IntoResponse;

    use super::*;

    fn error_code(response: &Response) -> String {
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        body["error"]["code"].as_str().unwrap().to_owned()
    }

    #[test]
    fn unknown_paths_are_404_in_json() {
        for path in ["/", "/statuses", "/status/extra", "/record/a1"] {
            let response = serve(Request::new(Method::Get, path)).into_response();
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(error_code(&response), "not_found");
            assert_eq!(
                response.headers().get("content-type"),
                Some("application/json")
            );
        }
    }

    #[test]
    fn status_accepts_only_get() {
        for method in [Method::Post, Method::Put, Method::Delete, Method::Head] {
            let response = serve(Request::new(method.clone(), "/status")).into_response();
            assert_eq!(response.status(), 405, "{method}");
            assert_eq!(error_code(&response), "method_not_allowed");
            assert_eq!(response.headers().get("allow"), Some("GET"));
        }
    }
}
