//! The condition language of endpoint monitors: what a check's answer must satisfy for
//! the endpoint to count as up. One condition is `subject operator value`:
//!
//! | subject | what it is | operators | value |
//! |---|---|---|---|
//! | `status` | the HTTP status code | `== != < <= > >=` | a number |
//! | `latencyMs` | milliseconds from the request's start to the end of its body | same | a number |
//! | `certificate.expiresInDays` | days until the server certificate's `notAfter` (https only) | same | a number |
//! | `body` | the response body as text | `contains == !=` | a "string" |
//! | `body.a.b[0]` | a value inside a JSON body: dotted keys and `[n]` indexes | all, `contains` too | a number, "string", `true` or `false` |
//!
//! `body.x contains v` holds when `x` is a string containing `v` or an array with an
//! element equal to `v`. A path the body does not have, or a body that is not JSON,
//! fails every condition on it. Strings are in double quotes, with `\"` and `\\`.
//!
//! Pure: parsing and evaluation only. A parse error names the column (counted in
//! characters from 1) where the text stops making sense, so the API can point at it.

use std::cell::OnceCell;
use std::fmt;

/// What an endpoint must answer when it names no condition.
pub(crate) const DEFAULT_CONDITION: &str = "status < 400";

/// One parsed condition, with the text it was written as.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    text: String,
    subject: Subject,
    operator: Operator,
    value: Literal,
}

#[derive(Debug, Clone, PartialEq)]
enum Subject {
    Status,
    LatencyMs,
    CertificateExpiresInDays,
    /// The whole body as text.
    Body,
    /// A value inside a JSON body.
    BodyPath(Vec<PathStep>),
}

#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// Why a condition does not parse: at which column, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub(crate) struct ConditionError {
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

/// What one check saw, for conditions to judge.
#[derive(Debug)]
pub(crate) struct Observation<'a> {
    pub status: u16,
    pub latency_ms: f64,
    pub body: &'a str,
    /// `None` over plain http, or when the server sent no certificate.
    pub certificate_expires_in_days: Option<f64>,
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> Observation<'a> {
    pub(crate) fn new(
        status: u16,
        latency_ms: f64,
        body: &'a str,
        certificate_expires_in_days: Option<f64>,
    ) -> Self {
        Self {
            status,
            latency_ms,
            body,
            certificate_expires_in_days,
            json: OnceCell::new(),
        }
    }

    /// The body as JSON, parsed once however many conditions ask.
    fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_str(self.body).ok())
            .as_ref()
    }
}

impl Condition {
    /// Parses one condition.
    pub(crate) fn parse(text: &str) -> Result<Self, ConditionError> {
        let mut scanner = Scanner::new(text);
        scanner.skip_spaces();
        let subject = scanner.subject()?;
        scanner.skip_spaces();
        let operator_at = scanner.column();
        let operator = scanner.operator()?;
        scanner.skip_spaces();
        let value_at = scanner.column();
        let value = scanner.literal()?;
        scanner.skip_spaces();
        if !scanner.at_end() {
            return Err(scanner.error("expected the end of the condition"));
        }
        check_types(&subject, operator, &value, operator_at, value_at)?;
        Ok(Self {
            text: text.trim().to_owned(),
            subject,
            operator,
            value,
        })
    }

    /// The condition as written (trimmed).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Whether it needs the server's certificate, which only https has.
    pub(crate) fn needs_certificate(&self) -> bool {
        self.subject == Subject::CertificateExpiresInDays
    }

    /// Whether what was seen satisfies this condition.
    pub(crate) fn holds(&self, seen: &Observation<'_>) -> bool {
        match &self.subject {
            Subject::Status => self.compare_number(f64::from(seen.status)),
            Subject::LatencyMs => self.compare_number(seen.latency_ms),
            Subject::CertificateExpiresInDays => seen
                .certificate_expires_in_days
                .is_some_and(|days| self.compare_number(days)),
            Subject::Body => {
                let Literal::Text(text) = &self.value else {
                    return false;
                };
                match self.operator {
                    Operator::Contains => seen.body.contains(text.as_str()),
                    Operator::Eq => seen.body == text,
                    Operator::Ne => seen.body != text,
                    _ => false,
                }
            }
            Subject::BodyPath(path) => seen
                .json()
                .and_then(|json| walk(json, path))
                .is_some_and(|found| self.compare_json(found)),
        }
    }

    fn compare_number(&self, actual: f64) -> bool {
        match self.value {
            Literal::Number(expected) => compare(self.operator, actual, expected),
            _ => false,
        }
    }

    fn compare_json(&self, found: &serde_json::Value) -> bool {
        use serde_json::Value;
        if self.operator == Operator::Contains {
            return match found {
                Value::String(text) => {
                    matches!(&self.value, Literal::Text(needle) if text.contains(needle.as_str()))
                }
                Value::Array(items) => items.iter().any(|item| self.value.equals(item)),
                _ => false,
            };
        }
        match (found, &self.value) {
            (Value::Number(number), Literal::Number(expected)) => number
                .as_f64()
                .is_some_and(|actual| compare(self.operator, actual, *expected)),
            (found, expected) => match self.operator {
                Operator::Eq => expected.equals(found),
                Operator::Ne => !expected.equals(found),
                // An order between a string or a boolean and anything: none holds.
                _ => false,
            },
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Literal {
    fn equals(&self, json: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, json) {
            (Literal::Number(expected), Value::Number(actual)) => {
                actual.as_f64() == Some(*expected)
            }
            (Literal::Text(expected), Value::String(actual)) => expected == actual,
            (Literal::Bool(expected), Value::Bool(actual)) => expected == actual,
            _ => false,
        }
    }
}

fn compare(operator: Operator, actual: f64, expected: f64) -> bool {
    match operator {
        Operator::Eq => actual == expected,
        Operator::Ne => actual != expected,
        Operator::Lt => actual < expected,
        Operator::Le => actual <= expected,
        Operator::Gt => actual > expected,
        Operator::Ge => actual >= expected,
        Operator::Contains => false,
    }
}

fn walk<'j>(json: &'j serde_json::Value, path: &[PathStep]) -> Option<&'j serde_json::Value> {
    path.iter().try_fold(json, |at, step| match step {
        PathStep::Key(key) => at.get(key.as_str()),
        PathStep::Index(index) => at.get(*index),
    })
}

/// Refuses what parses but can never make sense: a number subject compared with a
/// string, `contains` on a status code, an order between a body and a string.
fn check_types(
    subject: &Subject,
    operator: Operator,
    value: &Literal,
    operator_at: usize,
    value_at: usize,
) -> Result<(), ConditionError> {
    let refuse = |column, message: &str| {
        Err(ConditionError {
            column,
            message: message.to_owned(),
        })
    };
    let ordered = matches!(
        operator,
        Operator::Lt | Operator::Le | Operator::Gt | Operator::Ge
    );
    match subject {
        Subject::Status | Subject::LatencyMs | Subject::CertificateExpiresInDays => {
            if operator == Operator::Contains {
                return refuse(
                    operator_at,
                    "expected one of == != < <= > >= (`contains` applies to `body`)",
                );
            }
            if !matches!(value, Literal::Number(_)) {
                return refuse(value_at, "expected a number");
            }
        }
        Subject::Body => {
            if ordered {
                return refuse(
                    operator_at,
                    "expected `contains`, == or != (the whole body is text; compare a value \
                     inside a JSON body with `body.key`)",
                );
            }
            if !matches!(value, Literal::Text(_)) {
                return refuse(value_at, "expected a \"string\"");
            }
        }
        Subject::BodyPath(_) => {
            if ordered && !matches!(value, Literal::Number(_)) {
                return refuse(value_at, "expected a number");
            }
        }
    }
    Ok(())
}

/// Reads a condition's text left to right, knowing the column it is at.
struct Scanner {
    chars: Vec<char>,
    at: usize,
}

impl Scanner {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            at: 0,
        }
    }

    fn column(&self) -> usize {
        self.at + 1
    }

    fn at_end(&self) -> bool {
        self.at >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn error(&self, message: impl Into<String>) -> ConditionError {
        ConditionError {
            column: self.column(),
            message: message.into(),
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// A run of name characters (letters, digits, `_`, `-`).
    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn subject(&mut self) -> Result<Subject, ConditionError> {
        const EXPECTED: &str =
            "expected status, latencyMs, body, body.<path> or certificate.expiresInDays";
        let start = self.at;
        let word = self.word();
        let subject = match word.as_str() {
            "status" => Subject::Status,
            "latencyMs" => Subject::LatencyMs,
            "certificate" => {
                if self.peek() == Some('.') {
                    self.at += 1;
                    let field_at = self.at;
                    if self.word() == "expiresInDays" {
                        return Ok(Subject::CertificateExpiresInDays);
                    }
                    self.at = field_at;
                    return Err(self.error("expected expiresInDays"));
                }
                self.at = start;
                return Err(self.error(EXPECTED));
            }
            "body" => {
                let path = self.path()?;
                if path.is_empty() {
                    Subject::Body
                } else {
                    Subject::BodyPath(path)
                }
            }
            _ => {
                self.at = start;
                return Err(self.error(EXPECTED));
            }
        };
        Ok(subject)
    }

    /// `.key` and `[n]` steps after `body`, as many as there are.
    fn path(&mut self) -> Result<Vec<PathStep>, ConditionError> {
        let mut path = Vec::new();
        loop {
            match self.peek() {
                Some('.') => {
                    self.at += 1;
                    let key = self.word();
                    if key.is_empty() {
                        return Err(self.error("expected a key after `.`"));
                    }
                    path.push(PathStep::Key(key));
                }
                Some('[') => {
                    self.at += 1;
                    let start = self.at;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.at += 1;
                    }
                    let digits: String = self.chars[start..self.at].iter().collect();
                    let Ok(index) = digits.parse::<usize>() else {
                        self.at = start;
                        return Err(self.error("expected an index (a whole number) after `[`"));
                    };
                    if self.peek() != Some(']') {
                        return Err(self.error("expected `]`"));
                    }
                    self.at += 1;
                    path.push(PathStep::Index(index));
                }
                _ => return Ok(path),
            }
        }
    }

    fn operator(&mut self) -> Result<Operator, ConditionError> {
        const EXPECTED: &str = "expected an operator: == != < <= > >= or contains";
        let two: String = self.chars[self.at..].iter().take(2).collect();
        let (operator, width) = match two.as_str() {
            "==" => (Operator::Eq, 2),
            "!=" => (Operator::Ne, 2),
            "<=" => (Operator::Le, 2),
            ">=" => (Operator::Ge, 2),
            _ if two.starts_with('<') => (Operator::Lt, 1),
            _ if two.starts_with('>') => (Operator::Gt, 1),
            _ => {
                let start = self.at;
                if self.word() == "contains" {
                    return Ok(Operator::Contains);
                }
                self.at = start;
                return Err(self.error(EXPECTED));
            }
        };
        self.at += width;
        Ok(operator)
    }

    fn literal(&mut self) -> Result<Literal, ConditionError> {
        const EXPECTED: &str = "expected a value: a number, a \"string\", true or false";
        match self.peek() {
            None => Err(self.error(EXPECTED)),
            Some('"') => self.string(),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
                {
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                match text.parse::<f64>() {
                    Ok(number) if number.is_finite() => Ok(Literal::Number(number)),
                    _ => {
                        self.at = start;
                        Err(self.error("expected a number"))
                    }
                }
            }
            Some(_) => {
                let start = self.at;
                match self.word().as_str() {
                    "true" => Ok(Literal::Bool(true)),
                    "false" => Ok(Literal::Bool(false)),
                    _ => {
                        self.at = start;
                        Err(self.error(EXPECTED))
                    }
                }
            }
        }
    }

    /// A double-quoted string, the opening quote under the cursor.
    fn string(&mut self) -> Result<Literal, ConditionError> {
        let open = self.at;
        self.at += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    self.at = open;
                    return Err(self.error("this string has no closing `\"`"));
                }
                Some('"') => {
                    self.at += 1;
                    return Ok(Literal::Text(text));
                }
                Some('\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(c @ ('"' | '\\')) => text.push(c),
                        _ => return Err(self.error("expected `\\\"` or `\\\\` after `\\`")),
                    }
                    self.at += 1;
                }
                Some(c) => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
    }
}

/// The first of `conditions` that `seen` does not satisfy, if any.
pub(crate) fn first_failing<'c>(
    conditions: &'c [Condition],
    seen: &Observation<'_>,
) -> Option<&'c Condition> {
    conditions.iter().find(|condition| !condition.holds(seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(status: u16, latency_ms: f64, body: &str) -> Observation<'_> {
        Observation::new(status, latency_ms, body, None)
    }

    fn holds(condition: &str, seen: &Observation<'_>) -> bool {
        Condition::parse(condition)
            .unwrap_or_else(|err| panic!("{condition}: {err}"))
            .holds(seen)
    }

    fn error(condition: &str) -> (usize, String) {
        let err = Condition::parse(condition).unwrap_err();
        (err.column, err.message)
    }

    #[test]
    fn status_and_latency_compare_as_numbers() {
        let ok = seen(200, 120.0, "");
        for condition in [
            "status == 200",
            "status != 500",
            "status < 400",
            "status <= 200",
            "status > 199",
            "status >= 200",
            "latencyMs < 300",
            "  latencyMs<=120  ",
            "latencyMs > 1.5e1",
        ] {
            assert!(holds(condition, &ok), "{condition}");
        }
        for condition in ["status == 201", "status >= 400", "latencyMs < 100"] {
            assert!(!holds(condition, &ok), "{condition}");
        }
        assert!(holds(DEFAULT_CONDITION, &seen(302, 1.0, "")));
        assert!(!holds(DEFAULT_CONDITION, &seen(503, 1.0, "")));
    }

    #[test]
    fn a_json_body_is_reached_by_keys_and_indexes() {
        let body = r#"{"status": "UP", "checks": [{"name": "db", "ok": true, "ms": 12}],
                       "tags": ["eu", "prod"], "version": "1.4.2"}"#;
        let ok = seen(200, 5.0, body);
        for condition in [
            r#"body.status == "UP""#,
            r#"body.status != "DOWN""#,
            "body.checks[0].ok == true",
            "body.checks[0].ms < 50",
            r#"body.checks[0].name == "db""#,
            r#"body.tags contains "prod""#,
            r#"body.version contains "1.4""#,
            r#"body contains "UP""#,
        ] {
            assert!(holds(condition, &ok), "{condition}");
        }
        for condition in [
            r#"body.status == "DOWN""#,
            "body.checks[1].ok == true",
            "body.missing == 1",
            "body.missing != 1",
            r#"body.tags contains "us""#,
            "body.checks[0].ok == false",
            r#"body.checks[0].ms == "12""#,
            "body.status > 3",
        ] {
            assert!(!holds(condition, &ok), "{condition}");
        }
        // Not JSON: every path fails, the text tests still work.
        let text = seen(200, 5.0, "all ok");
        assert!(!holds(r#"body.status == "UP""#, &text));
        assert!(holds(r#"body contains "ok""#, &text));
        assert!(holds(r#"body == "all ok""#, &text));
    }

    #[test]
    fn the_certificate_counts_only_when_there_is_one() {
        let over_https = Observation::new(200, 1.0, "", Some(30.5));
        assert!(holds("certificate.expiresInDays > 14", &over_https));
        assert!(!holds("certificate.expiresInDays > 31", &over_https));
        assert!(!holds(
            "certificate.expiresInDays > 14",
            &seen(200, 1.0, "")
        ));
        assert!(
            Condition::parse("certificate.expiresInDays > 14")
                .unwrap()
                .needs_certificate()
        );
    }

    #[test]
    fn strings_take_escaped_quotes_and_backslashes() {
        let body = r#"say "hi" \ bye"#;
        assert!(holds(
            r#"body contains "say \"hi\" \\""#,
            &seen(200, 1.0, body)
        ));
    }

    #[test]
    fn errors_point_at_the_column_where_the_text_stops_making_sense() {
        assert_eq!(
            error("status == abc"),
            (
                11,
                "expected a value: a number, a \"string\", true or false".into()
            )
        );
        assert_eq!(error(r#"status == "ok""#), (11, "expected a number".into()));
        assert_eq!(error("latency < 3").0, 1);
        assert_eq!(error("status = 200").0, 8);
        assert_eq!(error("status 200").0, 8);
        assert_eq!(
            error("status == 200 ms"),
            (15, "expected the end of the condition".into())
        );
        assert_eq!(
            error("body.status =="),
            (
                15,
                "expected a value: a number, a \"string\", true or false".into()
            )
        );
        assert_eq!(error(r#"body contains "open"#).0, 15);
        assert_eq!(error("body. == 1").0, 6);
        assert_eq!(error("body.items[x] == 1").0, 12);
        assert_eq!(error("body.items[1 == 1").0, 13);
        assert_eq!(error("certificate.notAfter > 3").0, 13);
        assert_eq!(error("status contains 200").0, 8);
        assert_eq!(error("body < 3").0, 6);
        assert_eq!(error("body == 3").0, 9);
        assert_eq!(error(r#"body.count > "many""#).0, 14);
        assert_eq!(error("status < 1e999").0, 10);
        assert_eq!(error("").0, 1);
    }

    #[test]
    fn the_first_failing_condition_is_named_by_its_text() {
        let conditions: Vec<Condition> =
            ["status == 200", " latencyMs < 100 ", "body contains \"ok\""]
                .iter()
                .map(|text| Condition::parse(text).unwrap())
                .collect();
        assert_eq!(first_failing(&conditions, &seen(200, 5.0, "ok")), None);
        let failed = first_failing(&conditions, &seen(200, 500.0, "ok")).unwrap();
        assert_eq!(failed.text(), "latencyMs < 100");
        assert_eq!(failed.to_string(), "latencyMs < 100");
    }
}
