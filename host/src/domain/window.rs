//! A window of time cut into equal steps: what every time-series question asks for
//! (usage, outbound consumption, module metrics). Parsed once here, so every series
//! answers the same parameters the same way and refuses the same mistakes.

use super::Millis;

/// One minute, the finest step any series keeps.
pub(crate) const MINUTE: Millis = 60_000;
/// One hour.
pub(crate) const HOUR: Millis = 60 * MINUTE;
/// One day.
pub(crate) const DAY: Millis = 24 * HOUR;

/// The steps every series is kept at, finest first: usage rollups and module metrics'
/// rollups alike. A question reads the coarsest that divides its step
/// ([`rollup_step_for`]), so a month at one-hour steps reads hours, not minutes.
pub(crate) const ROLLUP_STEPS: [Millis; 3] = [MINUTE, HOUR, DAY];

/// The coarsest rollup step that divides `step`: the fewest rows that answer it exactly.
pub(crate) fn rollup_step_for(step: Millis) -> Millis {
    ROLLUP_STEPS
        .into_iter()
        .rev()
        .find(|rollup| step % rollup == 0)
        .unwrap_or(MINUTE)
}

/// The window when the client names none: the last day.
pub(crate) const DEFAULT_SPAN: Millis = DAY;

/// Points a series has at most when the client names no step: the default step is the
/// smallest of [`NICE_STEPS`] that keeps the window under this, about what a chart a
/// screen wide can show.
pub(crate) const DEFAULT_MAX_POINTS: i64 = 300;

/// Points a series may have at most with a step the client chose. A year at one-minute
/// steps would be 525,600 points: a slow answer nobody can draw, so it is refused with
/// the step that would fit.
pub(crate) const MAX_POINTS: i64 = 10_000;

/// The steps tried, in order, for a default step.
const NICE_STEPS: [Millis; 9] = [
    MINUTE,
    5 * MINUTE,
    15 * MINUTE,
    HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    7 * DAY,
];

/// `a / b` rounded up, for a positive `b` (the standard library's is unstable for signed
/// integers).
pub(crate) fn ceil_div(a: Millis, b: Millis) -> Millis {
    a.div_euclid(b) + Millis::from(a.rem_euclid(b) != 0)
}

/// The smallest multiple of `b` not below `a`, for a positive `b`.
pub(crate) fn round_up(a: Millis, b: Millis) -> Millis {
    ceil_div(a, b) * b
}

/// `[from, to)` cut into steps of `step`, each point starting at a multiple of `step`
/// since the Unix epoch (so points of two queries line up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub from: Millis,
    pub to: Millis,
    pub step: Millis,
}

/// What is wrong with a requested window; `parameter` names the query parameter to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub(crate) struct WindowError {
    pub parameter: &'static str,
    pub message: String,
}

fn refuse(parameter: &'static str, message: impl Into<String>) -> WindowError {
    WindowError {
        parameter,
        message: message.into(),
    }
}

impl Window {
    /// The window of `from`, `to` and `step` as a client wrote them (each optional),
    /// at `now`: `to` defaults to now, `from` to [`DEFAULT_SPAN`] before `to`, `step` to
    /// the smallest nice step giving at most [`DEFAULT_MAX_POINTS`] points. `from` is
    /// rounded down and `to` up to whole steps.
    pub(crate) fn parse(
        from: Option<&str>,
        to: Option<&str>,
        step: Option<&str>,
        now: Millis,
    ) -> Result<Self, WindowError> {
        let to = to.map(|t| parse_time("to", t)).transpose()?.unwrap_or(now);
        let from = from
            .map(|t| parse_time("from", t))
            .transpose()?
            .unwrap_or(to - DEFAULT_SPAN);
        if from >= to {
            return Err(refuse(
                "from",
                format!("must be before `to` ({from} is not before {to})"),
            ));
        }
        let span = to - from;
        let step = match step {
            Some(text) => {
                let step = parse_step(text)?;
                let points = ceil_div(span, step);
                if points > MAX_POINTS {
                    let fitting = NICE_STEPS
                        .iter()
                        .find(|s| ceil_div(span, **s) <= MAX_POINTS)
                        .map_or_else(|| "a longer one".to_owned(), |s| format_step(*s));
                    return Err(refuse(
                        "step",
                        format!(
                            "`{text}` cuts this window into {points} points, more than \
                             {MAX_POINTS}; use {fitting}, or a shorter window"
                        ),
                    ));
                }
                step
            }
            None => NICE_STEPS
                .iter()
                .copied()
                .find(|s| ceil_div(span, *s) <= DEFAULT_MAX_POINTS)
                .unwrap_or_else(|| round_up(ceil_div(span, DEFAULT_MAX_POINTS), DAY)),
        };
        Ok(Self {
            from: from.div_euclid(step) * step,
            to: round_up(to, step),
            step,
        })
    }

    /// The number of points in the window.
    pub(crate) fn points(&self) -> i64 {
        (self.to - self.from) / self.step
    }
}

/// A time as a client writes it: milliseconds since the Unix epoch (what the API
/// answers with) or RFC 3339 (`2026-12-01T00:00:00Z`, `2026-12-01T01:00:00+01:00`).
pub(crate) fn parse_time(parameter: &'static str, text: &str) -> Result<Millis, WindowError> {
    if let Ok(millis) = text.parse::<Millis>() {
        return Ok(millis);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            refuse(
                parameter,
                format!(
                    "`{text}` is not a time; use milliseconds since the Unix epoch or \
                     RFC 3339 such as 2026-12-01T00:00:00Z"
                ),
            )
        })
}

/// A step: a whole number of minutes, hours or days (`1m`, `15m`, `1h`, `1d`).
pub(crate) fn parse_step(text: &str) -> Result<Millis, WindowError> {
    let wrong = || {
        refuse(
            "step",
            format!(
                "`{text}` is not a step; use a whole number of minutes, hours or days \
                 such as 1m, 15m, 1h or 1d"
            ),
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(wrong)?;
    let (count, unit) = text.split_at(split);
    let unit = match unit {
        "m" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        _ => return Err(wrong()),
    };
    let count: Millis = count.parse().map_err(|_| wrong())?;
    if !(1..=366 * DAY / unit).contains(&count) {
        return Err(wrong());
    }
    Ok(count * unit)
}

/// `1m`, `6h`, `1d`: the shortest way to write a step.
pub(crate) fn format_step(step: Millis) -> String {
    if step % DAY == 0 {
        format!("{}d", step / DAY)
    } else if step % HOUR == 0 {
        format!("{}h", step / HOUR)
    } else {
        format!("{}m", step / MINUTE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_796_000_000_000;

    #[test]
    fn a_step_reads_the_coarsest_rollup_that_divides_it() {
        assert_eq!(rollup_step_for(MINUTE), MINUTE);
        assert_eq!(rollup_step_for(15 * MINUTE), MINUTE);
        assert_eq!(rollup_step_for(90 * MINUTE), MINUTE);
        assert_eq!(rollup_step_for(HOUR), HOUR);
        assert_eq!(rollup_step_for(6 * HOUR), HOUR);
        assert_eq!(rollup_step_for(DAY), DAY);
        assert_eq!(rollup_step_for(7 * DAY), DAY);
    }

    #[test]
    fn the_default_is_the_last_day_in_at_most_300_points() {
        let w = Window::parse(None, None, None, NOW).unwrap();
        assert_eq!(w.step, 5 * MINUTE);
        assert!(w.to >= NOW && w.to - NOW < w.step);
        assert!(w.points() <= DEFAULT_MAX_POINTS + 1, "{}", w.points());
        assert_eq!(w.from % w.step, 0);
    }

    #[test]
    fn times_are_epoch_millis_or_rfc_3339() {
        assert_eq!(parse_time("from", "1796000000000"), Ok(1_796_000_000_000));
        assert_eq!(
            parse_time("from", "2026-12-01T00:00:00Z"),
            Ok(1_796_083_200_000)
        );
        assert_eq!(
            parse_time("from", "2026-12-01T01:00:00+01:00"),
            Ok(1_796_083_200_000)
        );
        let err = parse_time("to", "yesterday").unwrap_err();
        assert_eq!(err.parameter, "to");
        assert!(err.message.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn steps_are_whole_minutes_hours_or_days() {
        assert_eq!(parse_step("1m"), Ok(MINUTE));
        assert_eq!(parse_step("15m"), Ok(15 * MINUTE));
        assert_eq!(parse_step("1h"), Ok(HOUR));
        assert_eq!(parse_step("7d"), Ok(7 * DAY));
        for bad in ["", "m", "0m", "1s", "1.5h", "-1h", "1w", "99999999999999d"] {
            assert_eq!(parse_step(bad).unwrap_err().parameter, "step", "{bad}");
        }
        assert_eq!(format_step(90 * MINUTE), "90m");
        assert_eq!(format_step(6 * HOUR), "6h");
    }

    #[test]
    fn a_backward_window_names_from() {
        let err = Window::parse(Some("2000"), Some("1000"), None, NOW).unwrap_err();
        assert_eq!(err.parameter, "from");
        let err = Window::parse(Some("1000"), Some("1000"), None, NOW).unwrap_err();
        assert_eq!(err.parameter, "from");
    }

    #[test]
    fn a_step_giving_too_many_points_is_refused_with_one_that_fits() {
        let from = (NOW - 365 * DAY).to_string();
        let err = Window::parse(Some(&from), None, Some("1m"), NOW).unwrap_err();
        assert_eq!(err.parameter, "step");
        assert!(err.message.contains("use 1h"), "{err}");
        assert!(Window::parse(Some(&from), None, Some("1h"), NOW).is_ok());
    }

    #[test]
    fn windows_align_to_whole_steps() {
        let w = Window::parse(Some("90000"), Some("150000"), Some("1m"), NOW).unwrap();
        assert_eq!((w.from, w.to, w.step), (60_000, 180_000, MINUTE));
        assert_eq!(w.points(), 2);
    }

    #[test]
    fn a_very_long_window_gets_a_default_step_of_whole_days() {
        let w = Window::parse(Some("0"), None, None, NOW).unwrap();
        assert_eq!(w.step % DAY, 0);
        assert!(w.points() <= DEFAULT_MAX_POINTS + 1);
    }
}
