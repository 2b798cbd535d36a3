//! The all-problems-at-once machinery: the prepared environment, variables with their effective
//! values, typed reads that record a problem and go on, and the rendering of problems without the
//! frontend password.

#[cfg(test)]
use std::cell::RefCell;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::DeserializeOwned;

use super::{
    ConfigError, IGNORED_VARIABLES, VARIABLES, Variable,
    duration::{parse_go_bool, parse_go_duration},
    quantity::parse_quantity,
};
use crate::k8s::labels;

/// Suffix of Sourcegraph's per-process override: `NAME_executor` takes precedence over `NAME`.
const OVERRIDE_SUFFIX: &str = "_executor";

fn catalogue() -> impl Iterator<Item = &'static Variable> {
    VARIABLES.iter().chain(IGNORED_VARIABLES)
}

/// The catalogue default of `name`. A default like `$HOSTNAME` stands for another variable's value,
/// which the builder applies itself.
pub fn default_of(name: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .find(|variable| variable.name == name)
        .map(|variable| variable.default)
        .filter(|default| !default.is_empty() && !default.starts_with('$'))
}

/// The environment after the rules every variable shares, read by catalogue name.
pub(super) struct Env {
    /// Known variables only, non-empty, overrides applied.
    values: BTreeMap<String, String>,
    /// Variables whose value came from `NAME_executor`.
    overridden: BTreeSet<String>,
    /// Every name the builder asked for, so a test can hold the builder to the catalogue.
    #[cfg(test)]
    read: RefCell<BTreeSet<&'static str>>,
}

impl Env {
    /// Applies the rules shared by every variable: empty means unset, `NAME_executor` wins over
    /// `NAME`, and only the exact names of the catalogue are kept (so `Executor_Queue_Name` is not
    /// taken for `EXECUTOR_QUEUE_NAME`).
    pub(super) fn prepare(vars: impl IntoIterator<Item = (String, String)>) -> Env {
        let known: BTreeSet<&str> = catalogue().map(|variable| variable.name).collect();
        let mut plain = BTreeMap::new();
        let mut overrides = BTreeMap::new();
        for (name, value) in vars {
            if value.is_empty() {
                continue;
            }
            if let Some(base) = name.strip_suffix(OVERRIDE_SUFFIX)
                && known.contains(base)
            {
                overrides.insert(base.to_owned(), value);
            } else if known.contains(name.as_str()) {
                plain.insert(name, value);
            }
        }
        let overridden = overrides.keys().cloned().collect();
        plain.extend(overrides);
        Env {
            values: plain,
            overridden,
            #[cfg(test)]
            read: RefCell::default(),
        }
    }

    /// The value set for `name`, without its default.
    pub(super) fn value(&self, name: &'static str) -> Option<&str> {
        #[cfg(test)]
        self.read.borrow_mut().insert(name);
        self.values.get(name).map(String::as_str)
    }

    /// The variable `name` with its value, else its catalogue default.
    pub(super) fn var(&self, name: &'static str) -> Var<'_> {
        Var {
            name,
            source: name,
            value: self.value(name).or_else(|| default_of(name)),
        }
    }

    /// `name`, or the older `fallback` name when only that is set.
    pub(super) fn var_with_fallback(&self, name: &'static str, fallback: &'static str) -> Var<'_> {
        match (self.value(name), self.value(fallback)) {
            (None, Some(old)) => Var {
                name,
                source: fallback,
                value: Some(old),
            },
            _ => self.var(name),
        }
    }

    /// The names asked for so far.
    #[cfg(test)]
    pub(super) fn names_read(&self) -> BTreeSet<&'static str> {
        self.read.borrow().clone()
    }
}

/// A variable's name and effective value: what was set, else the catalogue default.
#[derive(Clone, Copy)]
pub(super) struct Var<'a> {
    pub(super) name: &'static str,
    /// The variable the value came from: `name`, or an older name it falls back to.
    source: &'static str,
    pub(super) value: Option<&'a str>,
}

impl Var<'_> {
    pub(super) fn is_set(&self) -> bool {
        self.value.is_some()
    }
}

/// Collects problems while turning strings into typed values. Parse methods return a placeholder
/// after recording a problem, so that every variable is checked even when an earlier one failed.
pub(super) struct Parser<'e> {
    problems: Vec<String>,
    overridden: &'e BTreeSet<String>,
}

/// Records that `name` (an override included) has a value that is not UTF-8.
pub(super) fn non_utf8_problem(name: &str, problems: &mut Vec<String>) {
    let base = name.strip_suffix(OVERRIDE_SUFFIX).unwrap_or(name);
    if catalogue().any(|variable| variable.name == base) {
        problems.push(format!("{name}: the value is not valid UTF-8"));
    }
}

pub(super) fn render_problems(problems: &[String]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut text = format!("invalid configuration ({} {noun}):", problems.len());
    for problem in problems {
        text.push_str("\n  - ");
        text.push_str(problem);
    }
    text
}

/// NB: a password pasted into the wrong variable would otherwise be quoted back; short values are
/// left alone because replacing them would mangle unrelated text (the frontend demands 20+ chars).
fn redact_password(problems: &mut [String], password: Option<&str>) {
    let Some(password) = password.filter(|password| password.len() >= 6) else {
        return;
    };
    for problem in problems {
        if problem.contains(password) {
            *problem = problem.replace(password, "[redacted]");
        }
    }
}

const DURATION_EXAMPLES: &str = "examples: 1s, 30m, 1h30m";
const QUANTITY_EXAMPLES: &str = "examples: 500m, 2, 1.5, 512Mi, 12Gi, 1e3";
const BOOL_VALUES: &str = "1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False";
/// Largest UID/GID and `int32` field value Kubernetes accepts.
pub(super) const MAX_ID: i64 = i32::MAX as i64;
pub(super) const U32_MAX: i64 = u32::MAX as i64;

/// What [`Parser::dns_subdomain`] expects, also quoted by checks of lists of names.
pub(super) const DNS_SUBDOMAIN_RULE: &str = "is not a valid Kubernetes name (dot-separated parts of lowercase letters, digits and '-', each starting and ending with a letter or digit, at most 253 characters)";

impl<'e> Parser<'e> {
    /// `problems`: those found before parsing started.
    pub(super) fn new(env: &'e Env, problems: Vec<String>) -> Self {
        Parser {
            problems,
            overridden: &env.overridden,
        }
    }

    /// Every problem recorded, with `password` redacted, or `Ok` when there is none.
    pub(super) fn finish(self, password: Option<&str>) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        let mut problems = self.problems;
        redact_password(&mut problems, password);
        Err(ConfigError { problems })
    }

    /// Records a problem worded in full by the caller (it names the variables itself).
    pub(super) fn push(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// How a problem names a variable: the one the user set, including where an override came from.
    pub(super) fn label(&self, var: &Var<'_>) -> String {
        if self.overridden.contains(var.source) {
            format!("{} (set by {}{OVERRIDE_SUFFIX})", var.source, var.source)
        } else if var.source != var.name {
            format!("{} (fallback for {})", var.source, var.name)
        } else {
            var.source.to_owned()
        }
    }

    pub(super) fn problem(&mut self, var: &Var<'_>, message: impl std::fmt::Display) {
        let label = self.label(var);
        self.problems.push(format!("{label}: {message}"));
    }

    /// Records that the value is wrong, quoting it.
    pub(super) fn invalid(&mut self, var: &Var<'_>, value: &str, expected: impl std::fmt::Display) {
        self.problem(var, format_args!("{value:?} {expected}"));
    }

    pub(super) fn string(&mut self, var: Var<'_>) -> Option<String> {
        var.value.map(str::to_owned)
    }

    /// A Go `strconv.ParseBool` value; `None` when unset or invalid.
    pub(super) fn bool_opt(&mut self, var: Var<'_>) -> Option<bool> {
        let value = var.value?;
        let parsed = parse_go_bool(value);
        if parsed.is_none() {
            self.invalid(
                &var,
                value,
                format_args!("is not a boolean (expected one of {BOOL_VALUES})"),
            );
        }
        parsed
    }

    pub(super) fn bool(&mut self, var: Var<'_>) -> bool {
        self.bool_opt(var).unwrap_or(false)
    }

    /// An integer within `min..=max`; `None` when unset or invalid.
    pub(super) fn int(&mut self, var: Var<'_>, min: i64, max: i64) -> Option<i64> {
        let value = var.value?;
        match value.parse::<i64>() {
            Ok(parsed) if parsed < min => {
                self.invalid(
                    &var,
                    value,
                    format_args!("is too small (expected at least {min})"),
                );
                None
            }
            Ok(parsed) if parsed > max => {
                self.invalid(&var, value, format_args!("is too large (expected at most {max})"));
                None
            }
            Ok(parsed) => Some(parsed),
            Err(_) => {
                self.invalid(&var, value, "is not an integer");
                None
            }
        }
    }

    /// An integer within `min..=max` converted to `T` (the caller picks `max` so that it fits).
    pub(super) fn int_as<T: TryFrom<i64>>(&mut self, var: Var<'_>, min: i64, max: i64) -> Option<T> {
        self.int(var, min, max)
            .and_then(|parsed| T::try_from(parsed).ok())
    }

    /// A Go duration; `None` when unset or invalid. Negative durations are rejected.
    pub(super) fn duration(&mut self, var: Var<'_>) -> Option<Duration> {
        let value = var.value?;
        match parse_go_duration(value) {
            Some(nanos) if nanos < 0 => {
                self.invalid(&var, value, "is negative (expected a duration of 0 or more)");
                None
            }
            Some(nanos) => Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))),
            None => {
                self.invalid(
                    &var,
                    value,
                    format_args!("is not a duration ({DURATION_EXAMPLES})"),
                );
                None
            }
        }
    }

    /// A duration greater than zero, or `Duration::ZERO` after recording a problem.
    pub(super) fn positive_duration(&mut self, var: Var<'_>) -> Duration {
        let parsed = self.duration(var);
        if parsed == Some(Duration::ZERO)
            && let Some(value) = var.value
        {
            self.invalid(&var, value, "must be greater than 0");
        }
        parsed.unwrap_or_default()
    }

    /// A Kubernetes quantity of 0 or more; `Some(None)` for zero, `None` when unset or invalid.
    pub(super) fn quantity(&mut self, var: Var<'_>) -> Option<Option<Quantity>> {
        let value = var.value?;
        match parse_quantity(value) {
            Ok(parsed) if parsed.negative && !parsed.zero => {
                self.invalid(&var, value, "is negative (expected a quantity of 0 or more)");
                None
            }
            Ok(parsed) if parsed.zero => Some(None),
            Ok(_) => Some(Some(Quantity(value.to_owned()))),
            Err(reason) => {
                self.invalid(
                    &var,
                    value,
                    format_args!("is not a Kubernetes quantity: {reason} ({QUANTITY_EXAMPLES})"),
                );
                None
            }
        }
    }

    /// A JSON document of type `T`; empty (`T::default()`) when unset or invalid.
    pub(super) fn json<T: DeserializeOwned + Default>(&mut self, var: Var<'_>, shape: &str) -> T {
        let Some(value) = var.value else {
            return T::default();
        };
        serde_json::from_str(value).unwrap_or_else(|error| {
            self.invalid(&var, value, format_args!("is not a valid JSON {shape}: {error}"));
            T::default()
        })
    }

    /// One of `choices`, compared exactly.
    pub(super) fn choice<T: Copy>(&mut self, var: Var<'_>, choices: &[(&str, T)], fallback: T) -> T {
        let Some(value) = var.value else { return fallback };
        if let Some((_, parsed)) = choices.iter().find(|(name, _)| *name == value) {
            return *parsed;
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        self.invalid(&var, value, format_args!("is not one of {}", names.join(", ")));
        fallback
    }

    /// A UID or GID as Kubernetes accepts them, worded like Sourcegraph's own message.
    pub(super) fn id(&mut self, var: Var<'_>, kind: &str) -> Option<i64> {
        let value = var.value?;
        match value.parse::<i64>() {
            Ok(parsed) if (0..=MAX_ID).contains(&parsed) => Some(parsed),
            _ => {
                let label = self.label(&var);
                self.push(format!(
                    "{label} must be a {kind} in the range 0 to 2,147,483,647, but got {value:?}."
                ));
                None
            }
        }
    }

    /// An RFC 1123 DNS label, as Kubernetes requires for namespace names.
    pub(super) fn dns_label(&mut self, var: Var<'_>) -> Option<String> {
        let value = var.value?;
        if !labels::is_dns_label(value) {
            self.invalid(
                &var,
                value,
                "is not a valid Kubernetes name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)",
            );
        }
        Some(value.to_owned())
    }

    /// An RFC 1123 DNS subdomain, as Kubernetes requires for node, ServiceAccount and Secret names.
    pub(super) fn dns_subdomain(&mut self, var: Var<'_>) -> Option<String> {
        let value = var.value?;
        if !labels::is_dns_subdomain(value) {
            self.invalid(&var, value, DNS_SUBDOMAIN_RULE);
        }
        Some(value.to_owned())
    }
}
