//! Approval bound to code, end to end: the real `runcell serve`, `runcell keygen` and
//! `runcell sign`, over HTTP. An operator's new code under an approved module's name
//! waits for an admin whatever it asks for; the same bytes again keep their approval;
//! a signature by a publisher key an admin pinned keeps it too, as long as the version
//! asks for no more; jobs and module routes refuse code nobody approved. An admin's
//! grant of outbound hosts, narrower or wider than the request, is what a guest reaches.

#[path = "support/guests.rs"]
mod guests;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/outbound.rs"]
mod outbound;
#[path = "support/peers.rs"]
mod peers;
#[allow(
    dead_code,
    reason = "shared with other test binaries, each of which uses a different part of it"
)]
#[path = "support/server.rs"]
mod server;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use outbound::HttpClientSetup;
use server::{Reply, Server};

const OPERATOR_PASSWORD: &str = "operator password 1";
const VIEWER_PASSWORD: &str = "viewer password 12";
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// `wasm` with a custom section appended: other bytes (another content hash), the very
/// same module, jobs and capabilities. What an attacker uploads looks just like this.
fn new_code(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"runcell-test";
    let mut payload = vec![u8::try_from(name.len()).unwrap()];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    out.push(u8::try_from(payload.len()).expect("a short tag"));
    out.extend_from_slice(&payload);
    out
}

/// Creates user `name` with `role` as the admin and returns their access token.
fn user(server: &Server, name: &str, role: &str, password: &str) -> String {
    let created = server.post_json(
        "/api/v1/users",
        &json!({"username": name, "password": password, "role": role}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    server.login(name, password)
}

/// Uploads `wasm` with `token`, its signature (if any) in the `X-Runcell-Signature`
/// header.
fn upload(server: &Server, token: &str, wasm: &[u8], signature: Option<&str>) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut request = agent
        .post(server.url("/api/v1/modules"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/wasm");
    if let Some(signature) = signature {
        request = request.header("x-runcell-signature", signature);
    }
    let mut response = request.send(wasm).expect("the upload reaches the server");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    Reply {
        status,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
        content_type: String::new(),
        request_id: None,
    }
}

/// Uploads `wasm` with `token` as a multipart form, its signature in the field
/// `signature`.
fn upload_form(server: &Server, token: &str, wasm: &[u8], signature: &str) -> Reply {
    let boundary = "approval-test-boundary-0f9a";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"signature\"\r\n\r\n{signature}\r\n\
         --{boundary}\r\ncontent-disposition: form-data; name=\"module\"; filename=\"m.wasm\"\r\n\
         content-type: application/wasm\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(wasm);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    server.request_as(
        Some(token),
        "POST",
        "/api/v1/modules",
        Some((&format!("multipart/form-data; boundary={boundary}"), &body)),
    )
}

/// Runs `runcell` with `args`; returns its stdout and stderr, asserting it succeeded.
fn runcell(args: &[&str]) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_runcell"))
        .args(args)
        .output()
        .expect("runcell runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "runcell {args:?}: {stdout}{stderr}"
    );
    (stdout, stderr)
}

/// Makes a key pair with `runcell keygen` into `dir/name.pem` (+ `.pub`); returns the
/// private key's path and the public key's PEM text.
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let private = private.to_str().unwrap().to_owned();
    let (public, _) = runcell(&["keygen", "--out", &private]);
    let written = std::fs::read_to_string(format!("{private}.pub")).unwrap();
    assert_eq!(public, written, "keygen prints the public key it wrote");
    (private, public)
}

/// The signature `runcell sign` prints for `wasm` under `key`.
fn sign(dir: &Path, key: &str, wasm: &[u8]) -> String {
    let file = dir.join("to-sign.wasm");
    std::fs::write(&file, wasm).unwrap();
    let (signature, _) = runcell(&["sign", "--key", key, file.to_str().unwrap()]);
    signature.trim().to_owned()
}

/// Runs job `id` by hand and waits for the end.
fn run(server: &Server, id: &str) -> Value {
    server.wait_final(&server.execute(id, None), RUN_TIMEOUT)
}

#[test]
fn new_code_by_an_operator_waits_for_an_admin_even_asking_for_nothing_new() {
    let server = Server::start();
    let hello = std::fs::read(guests::guest("hello")).unwrap();
    let v1 = server.upload(&guests::guest("hello"));
    assert_eq!(v1["awaitingApproval"], json!([]), "{v1}");
    assert_eq!(v1["uploadedBy"]["role"], "admin");
    let job = server.create_job(&json!({"name": "greeting", "module": "hello", "job": "greet"}));
    let id = job["id"].as_str().unwrap();
    assert_eq!(run(&server, id)["status"], "COMPLETED");

    // Other bytes, the same manifest (hello asks for no capabilities at all): waits.
    let ci = user(&server, "ci", "operator", OPERATOR_PASSWORD);
    let sneaky = new_code(&hello, "one");
    let uploaded = upload(&server, &ci, &sneaky, None);
    assert_eq!(uploaded.status, 201, "{}", uploaded.body);
    assert_eq!(
        uploaded.body["awaitingApproval"],
        json!(["new code by operator `ci`"]),
        "{}",
        uploaded.body
    );
    assert_eq!(uploaded.body["codeApproval"], Value::Null);
    assert_eq!(
        uploaded.body["uploadedBy"],
        json!({"username": "ci", "role": "operator", "token": null})
    );
    let refused = run(&server, id);
    assert_eq!(refused["status"], "FAILED", "{refused}");
    assert_eq!(refused["errorKind"], "NOT_RUNNABLE", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("new code by operator `ci`"), "{error}");
    assert!(error.contains("capabilities/approve"), "{error}");
    let listed = server.get("/api/v1/modules");
    assert_eq!(
        listed.body["items"][0]["awaitingApproval"],
        json!(["new code by operator `ci`"]),
        "{}",
        listed.body
    );

    // The approved bytes again keep their approval; the unapproved ones still wait.
    let back = upload(&server, &ci, &hello, None);
    assert_eq!(back.status, 201, "{}", back.body);
    assert_eq!(back.body["awaitingApproval"], json!([]), "{}", back.body);
    assert_eq!(
        back.body["uploadedBy"]["username"], "admin",
        "the first uploader stays"
    );
    assert_eq!(run(&server, id)["status"], "COMPLETED");
    let again = upload(&server, &ci, &sneaky, None);
    assert_eq!(
        again.body["awaitingApproval"],
        json!(["new code by operator `ci`"])
    );

    // An API token of the operator's is named too.
    let token = server.request_as(
        Some(&ci),
        "POST",
        "/api/v1/tokens",
        Some((
            "application/json",
            br#"{"name": "deploy", "role": "operator"}"#,
        )),
    );
    assert_eq!(token.status, 201, "{}", token.body);
    let secret = token.body["secret"].as_str().unwrap();
    let by_token = upload(&server, secret, &new_code(&hello, "two"), None);
    assert_eq!(
        by_token.body["awaitingApproval"],
        json!(["new code by operator `ci` (API token `deploy`)"]),
        "{}",
        by_token.body
    );
    let by_token_hash = by_token.body["contentHash"].as_str().unwrap().to_owned();

    // An operator cannot approve; an admin approving what they did not look at is
    // refused; approving what is current lets it run.
    let denied = server.request_as(
        Some(&ci),
        "POST",
        "/api/v1/modules/hello/capabilities/approve",
        None,
    );
    assert_eq!(denied.status, 403, "{}", denied.body);
    let v1_hash = v1["contentHash"].as_str().unwrap();
    let stale = server.post(&format!(
        "/api/v1/modules/hello/capabilities/approve?contentHash={v1_hash}"
    ));
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(run(&server, id)["status"], "FAILED");
    let approved = server.post(&format!(
        "/api/v1/modules/hello/capabilities/approve?contentHash={by_token_hash}"
    ));
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(approved.body["awaitingApproval"], json!([]));
    assert_eq!(approved.body["codeApproval"]["by"], "admin");
    assert_eq!(run(&server, id)["status"], "COMPLETED");

    // The versions listing tells each version's uploader and approval.
    let versions = server.get("/api/v1/modules/hello/versions").body;
    let unapproved: Vec<&Value> = versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["codeApproval"].is_null())
        .collect();
    assert_eq!(unapproved.len(), 1, "{versions}");
    assert_eq!(unapproved[0]["uploadedBy"]["username"], "ci");

    let audit = server.get("/api/v1/audit").body.to_string();
    assert!(audit.contains("module.install"), "{audit}");
    assert!(audit.contains("module.capabilities.approve"), "{audit}");
}

#[test]
fn a_version_signed_by_a_pinned_key_keeps_the_approval_unless_it_asks_for_more() {
    let server = Server::start();
    let keys = tempfile::tempdir().unwrap();
    let probe = std::fs::read(guests::guest("route-probe")).unwrap();
    server.upload(&guests::guest("route-probe"));
    let job = server.create_job(&json!({"name": "probe", "module": "route-probe", "job": "noop"}));
    let id = job["id"].as_str().unwrap();
    let ci = user(&server, "ci", "operator", OPERATOR_PASSWORD);
    let viewer = user(&server, "watcher", "viewer", VIEWER_PASSWORD);
    let route = |token: &str| server.request_as(Some(token), "GET", "/m/route-probe/version", None);
    assert_eq!(route(&ci).status, 200);

    let (release, release_pub) = keygen(keys.path(), "release");
    let (stranger, _) = keygen(keys.path(), "stranger");
    let pin = json!({"publicKey": release_pub, "comment": "release pipeline"});
    let pin_bytes = pin.to_string().into_bytes();
    let keys_path = "/api/v1/modules/route-probe/publisher-keys";
    for token in [&ci, &viewer] {
        let refused = server.request_as(
            Some(token),
            "POST",
            keys_path,
            Some(("application/json", &pin_bytes)),
        );
        assert_eq!(refused.status, 403, "{}", refused.body);
    }
    let bad_key = server.post_json(keys_path, &json!({"publicKey": "not a key"}));
    assert_eq!(bad_key.status, 400, "{}", bad_key.body);
    let pinned = server.post_json(keys_path, &pin);
    assert_eq!(pinned.status, 200, "{}", pinned.body);
    let key_id = pinned.body["keyId"].as_str().unwrap().to_owned();
    assert_eq!(pinned.body["publicKey"], release_pub.as_str());
    let listed = server.request_as(Some(&viewer), "GET", keys_path, None);
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["items"][0]["keyId"], key_id.as_str());
    assert_eq!(listed.body["items"][0]["comment"], "release pipeline");

    // Signed by the pinned key: runs at once, jobs and routes alike.
    let signed = new_code(&probe, "signed");
    let signature = sign(keys.path(), &release, &signed);
    assert!(
        signature.starts_with(&format!("ed25519:{key_id}:")),
        "{signature}"
    );
    let uploaded = upload(&server, &ci, &signed, Some(&signature));
    assert_eq!(uploaded.status, 201, "{}", uploaded.body);
    assert_eq!(
        uploaded.body["awaitingApproval"],
        json!([]),
        "{}",
        uploaded.body
    );
    assert_eq!(
        uploaded.body["codeApproval"]["by"],
        format!("publisher key `{key_id}`")
    );
    assert_eq!(run(&server, id)["status"], "COMPLETED");
    assert_eq!(route(&ci).status, 200);

    // Signed by a key nobody pinned (in a multipart form this time): waits, saying so.
    let stray = new_code(&probe, "stray");
    let stray_signature = sign(keys.path(), &stranger, &stray);
    let stranger_id = stray_signature.split(':').nth(1).unwrap().to_owned();
    let waiting = upload_form(&server, &ci, &stray, &stray_signature);
    assert_eq!(waiting.status, 201, "{}", waiting.body);
    assert_eq!(
        waiting.body["awaitingApproval"],
        json!([format!(
            "new code by operator `ci` (signed by key `{stranger_id}`, which is not pinned to the module)"
        )]),
        "{}",
        waiting.body
    );
    assert_eq!(run(&server, id)["errorKind"], "NOT_RUNNABLE");
    let unserved = route(&ci);
    assert_eq!(unserved.status, 403, "{}", unserved.body);
    assert!(
        unserved.message().contains("new code by operator `ci`"),
        "{}",
        unserved.body
    );

    // A signature that names the pinned key but does not verify refuses the upload; one
    // that is not a signature at all is malformed.
    let tampered = new_code(&probe, "tampered");
    let corrupt = upload(&server, &ci, &tampered, Some(&signature));
    assert_eq!(corrupt.status, 422, "{}", corrupt.body);
    assert_eq!(corrupt.field(), "signature", "{}", corrupt.body);
    assert!(corrupt.message().contains("not valid"), "{}", corrupt.body);
    let garbage = upload(&server, &ci, &tampered, Some("ed25519:nonsense"));
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    assert_eq!(garbage.field(), "signature");
    let versions = server.get("/api/v1/modules/route-probe/versions").body;
    assert_eq!(versions["items"].as_array().unwrap().len(), 3, "{versions}");

    // Signed, but asking for more (public routes): the code is approved, the request
    // is not.
    let v2 = std::fs::read(guests::guest("route-probe-v2")).unwrap();
    let more = upload(&server, &ci, &v2, Some(&sign(keys.path(), &release, &v2)));
    assert_eq!(more.status, 201, "{}", more.body);
    assert_eq!(more.body["awaitingApproval"], json!(["public HTTP routes"]));

    // Unpinning withdraws what the key approved.
    let current = upload(&server, &ci, &signed, None);
    assert_eq!(
        current.body["awaitingApproval"],
        json!([]),
        "{}",
        current.body
    );
    let key_path = format!("{keys_path}/{key_id}");
    let refused = server.request_as(Some(&ci), "DELETE", &key_path, None);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(server.delete(&key_path).status, 204);
    assert_eq!(server.delete(&key_path).status, 404);
    let withdrawn = server.get("/api/v1/modules/route-probe");
    assert_eq!(
        withdrawn.body["awaitingApproval"],
        json!([format!(
            "new code by operator `ci` (signed by key `{key_id}`, which is not pinned to the module)"
        )]),
        "{}",
        withdrawn.body
    );
    assert_eq!(route(&ci).status, 403);

    let audit = server.get("/api/v1/audit").body.to_string();
    assert!(audit.contains("module.publisher_key.pin"), "{audit}");
    assert!(audit.contains("module.publisher_key.unpin"), "{audit}");
}

#[test]
fn an_admin_narrows_or_extends_the_outbound_hosts_a_module_may_reach() {
    let HttpClientSetup {
        server,
        local,
        served,
        installed,
        ..
    } = outbound::http_client_beside_a_hello_server();
    assert_eq!(
        installed["awaitingApproval"],
        json!(["outbound host `api.example.com`", "HTTP routes"])
    );
    let job = server.create_job(&json!({
        "name": "fetcher", "module": "http-client", "job": "fetch", "maxAttempts": 1,
    }));
    let id = job["id"].as_str().unwrap();
    let fetch = |url: &str| {
        let execution = server.execute(id, Some(json!({"url": url})));
        (
            server.wait_final(&execution, RUN_TIMEOUT),
            server.logs(&execution),
        )
    };
    let approve = "/api/v1/modules/http-client/capabilities/approve";

    // Only an admin grants, and only host patterns.
    let ci = user(&server, "ci", "operator", OPERATOR_PASSWORD);
    let body = json!({"outboundHosts": [local]}).to_string();
    let refused = server.request_as(
        Some(&ci),
        "POST",
        approve,
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let bad = server.post_json(approve, &json!({"outboundHosts": [local, "http://x.org/"]}));
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.field(), "outboundHosts");
    assert!(bad.message().contains("`http://x.org/`"), "{}", bad.body);

    // Extended: a host the module did not ask for is reachable.
    let extended = server.post_json(
        approve,
        &json!({"outboundHosts": ["api.example.com", local]}),
    );
    assert_eq!(extended.status, 200, "{}", extended.body);
    let shown = server.get("/api/v1/modules/http-client").body;
    assert_eq!(shown["awaitingApproval"], json!([]), "{shown}");
    assert_eq!(
        shown["outboundHosts"],
        json!({
            "requested": ["api.example.com"],
            "granted": ["api.example.com", local],
            "extensions": [local],
            "withheld": [],
        })
    );
    let (reached, _) = fetch(&format!("http://{local}/"));
    assert_eq!(reached["status"], "COMPLETED", "{reached}");
    assert_eq!(reached["result"]["body"], "hello", "{reached}");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    // Narrowed to nothing: the host it asks for is denied, as an undeclared one is.
    let narrowed = server.post_json(approve, &json!({"outboundHosts": []}));
    assert_eq!(narrowed.status, 200, "{}", narrowed.body);
    assert_eq!(
        narrowed.body["outboundHosts"],
        json!({
            "requested": ["api.example.com"],
            "granted": [],
            "extensions": [],
            "withheld": ["api.example.com"],
        })
    );
    for (url, host) in [
        ("http://api.example.com/", "api.example.com:80".to_owned()),
        (&*format!("http://{local}/"), local.clone()),
    ] {
        let (denied, logs) = fetch(url);
        assert_eq!(denied["status"], "FAILED", "{denied}");
        let error = denied["error"].as_str().unwrap();
        assert!(error.contains("HttpRequestDenied"), "{error}");
        let denial = format!("denied: `{host}` is not among the module's granted outbound hosts");
        assert!(
            logs.iter()
                .any(|line| line["message"].as_str().unwrap().contains(&denial)),
            "{logs:?}"
        );
    }
    assert_eq!(served.load(Ordering::SeqCst), 1, "nothing denied was sent");

    // A new version asking for what the admin decided on runs at once, under the same
    // narrowed grant: it is not left waiting for an approval.
    let upgraded = server.post_bytes(
        "/api/v1/modules",
        "application/wasm",
        &new_code(&guests::guest_bytes("http-client"), "v2"),
    );
    assert_eq!(upgraded.status, 201, "{}", upgraded.body);
    assert_eq!(
        upgraded.body["awaitingApproval"],
        json!([]),
        "{}",
        upgraded.body
    );
    assert_eq!(upgraded.body["outboundHosts"]["granted"], json!([]));
    let (still_denied, _) = fetch(&format!("http://{local}/"));
    assert_eq!(still_denied["status"], "FAILED", "{still_denied}");
    assert_eq!(served.load(Ordering::SeqCst), 1);

    let audit = server.get("/api/v1/audit").body.to_string();
    assert!(
        audit.contains(&format!(
            r#""grantedOutboundHosts":["api.example.com","{local}"]"#
        )),
        "{audit}"
    );
    assert!(
        audit.contains(r#""withheldOutboundHosts":["api.example.com"]"#),
        "{audit}"
    );
}
