//! The API's reference: the OpenAPI 3.1 document and the page that renders it. The document
//! is not written by hand: each route file declares its routes with `routes!` over handlers
//! annotated with `#[utoipa::path]`, so the router and the document come from the same
//! declarations and a route cannot be served without being documented. This module owns
//! what the document says of the API as a whole (info, servers, the `bearer` security
//! scheme, the responses the middleware adds) and serves it at [`OPENAPI_PATH`], and the
//! page at [`DOCS_PATH`]. The page must never load anything from another origin: servers
//! may be air-gapped.
//!
//! A new route file starts its router with [`tagged`] (its tag and what the tag is about)
//! and is merged in `api::api_routes`; a route that needs no token says `security()`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_SECURITY_POLICY;
use axum::response::{Html, IntoResponse, Response};
use utoipa::ToSchema;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, Ref,
    RefOr, ResponseBuilder, ServerBuilder,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::ErrorBody;

/// Where the document is served.
pub(crate) const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Where the reference page is served.
pub(crate) const DOCS_PATH: &str = "/api/docs";
/// The name of the security scheme every operation needs unless it declares `security()`.
pub(crate) const BEARER: &str = "bearer";

const TAG: &str = "reference";

/// The page: one self-contained file, no external asset.
const DOCS_PAGE: &str = include_str!("docs.html");

/// What the page may do, enforced by the browser: run its own inline script and style and
/// talk to this server only.
const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Reusable responses in `components.responses`, added by [`finish`] where they apply.
const UNAUTHORIZED: &str = "Unauthorized";
const FORBIDDEN: &str = "Forbidden";
const INTERNAL: &str = "Internal";

/// An empty router whose document declares one tag: where each route file starts, so an
/// area's tag and its description sit with its routes.
pub(super) fn tagged<S>(name: &str, description: &str) -> OpenApiRouter<S>
where
    S: Send + Sync + Clone + 'static,
{
    let tag = TagBuilder::new()
        .name(name)
        .description(Some(description))
        .build();
    OpenApiRouter::with_openapi(OpenApiBuilder::new().tags(Some([tag])).build())
}

/// The document's frame, before any route is added: what it says of the API as a whole.
pub(super) fn frame() -> OpenApi {
    let info = InfoBuilder::new()
        .title("Runcell")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Runcell runs jobs that are WebAssembly components: upload a module, define jobs \
             on its handlers, trigger them by hand, on a cron schedule or on events, and read \
             every execution's result, logs and resource use.\n\n\
             Every request except the probes and this reference needs a bearer token \
             (`Authorization: Bearer <token>`). Every error has one shape, `ErrorBody`: match \
             on `error.code`. Listings are pages: pass a page's `nextCursor` as `cursor` to \
             get the next one; `null` means there is none.",
        ))
        .license(Some(
            LicenseBuilder::new()
                .name(env!("CARGO_PKG_LICENSE"))
                .identifier(Some(env!("CARGO_PKG_LICENSE")))
                .build(),
        ))
        .build();
    let bearer = SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "An access token from logging in, or an API token, as `Authorization: Bearer <token>`.",
            ))
            .build(),
    );
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build()
    };
    let components = ComponentsBuilder::new()
        .security_scheme(BEARER, bearer)
        .response(
            UNAUTHORIZED,
            error("No token, or one that is invalid or expired: log in again."),
        )
        .response(
            FORBIDDEN,
            error("The token is valid but its role may not do this."),
        )
        .response(
            INTERNAL,
            error(
                "A fault on the server's side that retrying will not fix (a bug, a corrupt row): the server logged the cause under `details.errorId`; quote it when reporting the problem.",
            ),
        )
        .build();
    OpenApiBuilder::new()
        .info(info)
        .servers(Some([ServerBuilder::new()
            .url("/")
            .description(Some("This server"))
            .build()]))
        .components(Some(components))
        .security(Some([SecurityRequirement::new::<_, _, &str>(BEARER, [])]))
        .build()
}

/// Adds the reference's own routes to `api`, completes its document and returns the
/// router, which serves it.
pub(super) fn serve_reference(api: OpenApiRouter<ApiState>) -> axum::Router<ApiState> {
    let (reference_routes, reference_document) = tagged::<Arc<OpenApi>>(
        TAG,
        "This document, and a page that renders it and can send requests. No token needed.",
    )
    .routes(routes!(openapi_json))
    .routes(routes!(docs_page))
    .split_for_parts();
    let (routes, mut document) = api.split_for_parts();
    document.merge(reference_document);
    finish(&mut document);
    routes.merge(reference_routes.with_state(Arc::new(document)))
}

/// Adds to every operation the responses that come from the middleware rather than from
/// its handler: `401` (and `403` where it changes something) wherever a token is needed,
/// and `500` everywhere.
fn finish(document: &mut OpenApi) {
    let global_security = document.security.clone().unwrap_or_default();
    for (path, item) in document.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            let security = operation.security.as_ref().unwrap_or(&global_security);
            let needs_token = !security.is_empty()
                && !security
                    .iter()
                    .any(|requirement| *requirement == SecurityRequirement::default());
            if needs_token {
                add_response(operation, "401", UNAUTHORIZED);
                // 403 wherever a viewer's token is not enough, as the access table says.
                let needed = super::access::required(&method, path);
                if matches!(needed, Some(super::access::Access::Role(role)) if role > crate::domain::Role::Viewer)
                {
                    add_response(operation, "403", FORBIDDEN);
                }
            }
            add_response(operation, "500", INTERNAL);
        }
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (http::Method, &mut Operation)> {
    [
        (http::Method::GET, item.get.as_mut()),
        (http::Method::PUT, item.put.as_mut()),
        (http::Method::POST, item.post.as_mut()),
        (http::Method::DELETE, item.delete.as_mut()),
        (http::Method::OPTIONS, item.options.as_mut()),
        (http::Method::HEAD, item.head.as_mut()),
        (http::Method::PATCH, item.patch.as_mut()),
        (http::Method::TRACE, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
}

fn add_response(operation: &mut Operation, status: &str, response: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::new(format!("#/components/responses/{response}"))));
}

/// The OpenAPI document
///
/// This API, described in OpenAPI 3.1, generated from the server's own route declarations.
#[utoipa::path(
    get,
    path = OPENAPI_PATH,
    tag = TAG,
    operation_id = "getOpenApi",
    security(),
    responses((status = 200, description = "The document.", body = Object)),
)]
async fn openapi_json(State(document): State<Arc<OpenApi>>) -> Response {
    Json(&*document).into_response()
}

/// The reference page
///
/// A page that renders this document, grouped by tag, and can send requests. It loads
/// nothing from elsewhere.
#[utoipa::path(
    get,
    path = DOCS_PATH,
    tag = TAG,
    operation_id = "getDocs",
    security(),
    responses((status = 200, description = "The page.", body = String, content_type = "text/html")),
)]
async fn docs_page() -> Response {
    let mut response = Html(DOCS_PAGE).into_response();
    response
        .headers_mut()
        .insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP));
    response
}
