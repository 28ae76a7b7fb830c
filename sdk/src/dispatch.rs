//! From the component's exports to the author's job functions: input parsing, output
//! encoding, error mapping. Everything here is reached through `module!`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::runcell::module::types as wit;
use crate::__bindings::wasi::http::types::{IncomingRequest, ResponseOutparam};
use crate::manifest::{const_str_eq, is_valid_name};
use crate::routes::{self, IntoResponse};
use crate::{Context, JobError, Manifest, NoInput, RouteAccess, Trigger};

/// A module declared with `module!`: its manifest and its dispatch by job name.
pub trait Module {
    /// The manifest `describe` returns.
    fn manifest() -> Manifest;

    /// Runs job `job`; called once per execution by the `run` export.
    fn run(job: &str, context: &Context, input: &str) -> Result<String, JobError>;
}

/// The `describe` export of module `M`.
pub fn describe<M: Module>() -> wit::Manifest {
    M::manifest().into()
}

/// The `settings` export of module `M`.
pub fn settings<M: Module>() -> Vec<wit::SettingSpec> {
    M::manifest().settings.into_iter().map(Into::into).collect()
}

/// The `run` export of module `M`.
pub fn run<M: Module>(
    job: &str,
    context: wit::RunContext,
    input: &str,
) -> Result<String, wit::JobError> {
    M::run(job, &context.into(), input).map_err(Into::into)
}

/// `manifest` for a module that serves routes to `access`.
pub fn with_routes(mut manifest: Manifest, access: RouteAccess) -> Manifest {
    manifest.capabilities.routes = access;
    manifest
}

/// The `wasi:http/incoming-handler` export of a module whose routes `handler` serves.
pub fn serve_routes<R, F>(request: IncomingRequest, response_out: ResponseOutparam, handler: F)
where
    R: IntoResponse,
    F: FnOnce(routes::Request) -> R,
{
    routes::serve(request, response_out, handler);
}

/// Parses `input`, calls `handler` and encodes its output.
///
/// A job that takes [`NoInput`] ignores the event that started it: it runs on the event,
/// not with it (and so does its retry, whose input is the same event).
pub fn invoke<I, O, E, F>(context: &Context, input: &str, handler: F) -> Result<String, JobError>
where
    I: DeserializeOwned + 'static,
    O: Serialize,
    E: Into<JobError>,
    F: FnOnce(&Context, I) -> Result<O, E>,
{
    let ignores_events = std::any::TypeId::of::<I>() == std::any::TypeId::of::<NoInput>();
    let input = if ignores_events && matches!(context.trigger(), Trigger::Event | Trigger::Retry) {
        parse_input("null")?
    } else {
        parse_input(input)?
    };
    let output = handler(context, input).map_err(Into::into)?;
    encode_output(&output)
}

/// The error for a job name the module does not declare.
pub fn unknown_job(job: &str, known: &[&str]) -> JobError {
    JobError::permanent(format_args!(
        "unknown job `{job}`; this module offers: {}",
        known.join(", ")
    ))
}

/// Compile-time check of the names given to `module!`.
pub const fn check_names(module: &str, jobs: &[&str]) {
    assert!(
        is_valid_name(module),
        "module name must be 1 to 64 bytes of lowercase letters, digits and `-`"
    );
    let mut i = 0;
    while i < jobs.len() {
        assert!(
            is_valid_name(jobs[i]),
            "job names must be 1 to 64 bytes of lowercase letters, digits and `-`"
        );
        let mut j = 0;
        while j < i {
            assert!(
                !const_str_eq(jobs[i], jobs[j]),
                "job names must be unique within a module"
            );
            j += 1;
        }
        i += 1;
    }
}

/// Parses the input JSON into `I`. Empty (or blank) input counts as `null`. A failure names
/// the path of the offending value and serde's position in the text.
fn parse_input<I: DeserializeOwned>(input: &str) -> Result<I, JobError> {
    let text = if input.trim().is_empty() {
        "null"
    } else {
        input
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let error = error.into_inner();
        if path == "." {
            JobError::invalid_input(error)
        } else {
            JobError::invalid_input(format_args!("{path}: {error}"))
        }
    })?;
    deserializer.end().map_err(JobError::invalid_input)?;
    Ok(value)
}

fn encode_output<O: Serialize>(output: &O) -> Result<String, JobError> {
    serde_json::to_string(output).map_err(|error| {
        JobError::permanent(format_args!(
            "could not encode the job's output as JSON: {error}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::Trigger;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Batch {
        records: Vec<Record>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Record {
        id: String,
        value: f64,
    }

    fn invalid_input_message<I: DeserializeOwned + std::fmt::Debug>(input: &str) -> String {
        match parse_input::<I>(input) {
            Err(JobError::InvalidInput(message)) => message,
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn a_job_taking_no_input_runs_on_an_event_and_ignores_it() {
        let envelope = r#"{"id":"e","topic":"t","source":"api","createdAt":0,"payload":{"a":1}}"#;
        let no_input = |_: &Context, _: NoInput| Ok::<_, JobError>("ran");
        for trigger in [Trigger::Event, Trigger::Retry] {
            let context = Context::new("x", trigger, 0);
            assert_eq!(invoke(&context, envelope, no_input).unwrap(), "\"ran\"");
        }
        // Asked by hand, it still refuses input it would ignore.
        let manual = Context::new("x", Trigger::Manual, 0);
        assert!(matches!(
            invoke(&manual, r#"{"a":1}"#, no_input),
            Err(JobError::InvalidInput(_))
        ));
        // Any other input type gets the event as it is.
        let typed = |_: &Context, event: crate::events::Event| Ok::<_, JobError>(event.payload);
        let context = Context::new("x", Trigger::Event, 0);
        assert_eq!(invoke(&context, envelope, typed).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn parses_json_into_the_input_type() {
        let batch: Batch = parse_input(r#"{"records":[{"id":"a","value":1.5}]}"#).unwrap();
        assert_eq!(
            batch.records,
            [Record {
                id: "a".to_owned(),
                value: 1.5
            }]
        );
    }

    #[test]
    fn empty_input_is_null() {
        parse_input::<()>("").unwrap();
        parse_input::<()>("  \n").unwrap();
        assert_eq!(parse_input::<Option<u32>>("").unwrap(), None);
    }

    #[test]
    fn a_parse_failure_names_the_path_and_the_position() {
        let message = invalid_input_message::<Batch>(
            r#"{"records":[{"id":"a","value":1},{"id":"b","value":"x"}]}"#,
        );
        assert!(message.starts_with("records[1].value: invalid type: string"));
        assert!(message.contains("line 1 column"), "{message}");
    }

    #[test]
    fn a_failure_at_the_root_has_no_path_prefix() {
        let message = invalid_input_message::<Batch>("\"x\"");
        assert!(
            message.starts_with("invalid type: string \"x\", expected struct Batch"),
            "{message}"
        );
    }

    #[test]
    fn missing_fields_and_trailing_text_are_invalid_input() {
        let message = invalid_input_message::<Batch>(r#"{"records":[{"id":"a"}]}"#);
        assert!(
            message.starts_with("records[0]: missing field `value`"),
            "{message}"
        );
        let message = invalid_input_message::<BTreeMap<String, u32>>(r#"{"a":1} x"#);
        assert!(message.starts_with("trailing characters"), "{message}");
        invalid_input_message::<BTreeMap<String, u32>>("{");
    }

    #[test]
    fn invoke_encodes_the_output_and_passes_errors_through() {
        let context = Context::new("exec-1", Trigger::Manual, 0);
        let doubled = invoke(&context, "21", |_: &Context, n: u32| {
            Ok::<_, JobError>(BTreeMap::from([("n", n * 2)]))
        });
        assert_eq!(doubled.unwrap(), r#"{"n":42}"#);

        let failed = invoke(&context, "", |_: &Context, (): ()| {
            Err::<(), _>(JobError::transient("later"))
        });
        assert_eq!(failed, Err(JobError::transient("later")));

        let unit = invoke(&context, "{}", |_: &Context, _: serde::de::IgnoredAny| {
            Ok::<_, JobError>(())
        });
        assert_eq!(unit.unwrap(), "null");
    }

    #[test]
    fn invoke_does_not_call_the_job_on_invalid_input() {
        let context = Context::new("exec-1", Trigger::Manual, 0);
        let result = invoke(
            &context,
            "\"x\"",
            |_: &Context, _: u32| -> Result<(), JobError> { panic!("must not be called") },
        );
        assert!(matches!(result, Err(JobError::InvalidInput(_))));
    }

    #[test]
    fn unencodable_output_is_permanent() {
        let context = Context::new("exec-1", Trigger::Manual, 0);
        let result = invoke(&context, "", |_: &Context, (): ()| {
            Ok::<_, JobError>(BTreeMap::from([((1, 2), 3)]))
        });
        assert!(matches!(result, Err(JobError::Permanent(m)) if m.contains("output")));
    }

    #[test]
    fn unknown_jobs_are_permanent_and_list_the_known_ones() {
        assert_eq!(
            unknown_job("nope", &["greet", "noop"]),
            JobError::Permanent("unknown job `nope`; this module offers: greet, noop".to_owned())
        );
    }

    #[test]
    fn valid_names_pass_the_compile_time_check() {
        check_names("data-sync", &["hourly-sync", "daily-report"]);
    }

    #[test]
    #[should_panic(expected = "unique")]
    fn duplicate_job_names_fail_the_check() {
        check_names("m", &["a", "b", "a"]);
    }

    #[test]
    #[should_panic(expected = "job names")]
    fn malformed_job_names_fail_the_check() {
        check_names("m", &["Hourly_Sync"]);
    }
}
