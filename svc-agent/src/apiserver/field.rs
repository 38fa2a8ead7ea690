//! Field errors, worded as k8s.io/apimachinery/pkg/util/validation/field
//! words them, so that a rejection reads as the API server's would.
use std::{collections::BTreeSet, fmt};

/// A field error's bad value, printed as the API server prints it.
#[derive(Clone, Debug)]
pub(super) enum Val {
    /// A Go string, printed with %q.
    Str(String),
    Int(i64),
    /// Printed as is (Go's %#v of a composite value).
    Go(String),
    /// A nil pointer.
    Null,
}

impl Val {
    pub(super) fn str(s: &str) -> Self {
        Val::Str(s.into())
    }

    /// A Go `[]string`, as %#v prints it.
    pub(super) fn strings(items: &[String]) -> Self {
        Val::Go(format!("[]string{}", go_list(items)))
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Str(s) => f.write_str(&quote(s)),
            Val::Int(n) => write!(f, "{n}"),
            Val::Go(s) => f.write_str(s),
            Val::Null => f.write_str("null"),
        }
    }
}

/// The braces of a Go slice printed with %#v, e.g. `{"a", "b"}`.
pub(super) fn go_list(items: &[String]) -> String {
    format!(
        "{{{}}}",
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Go's %q, near enough: the two agree on printable text.
pub(super) fn quote(s: &str) -> String {
    format!("{s:?}")
}

fn with_detail(s: String, detail: &str) -> String {
    if detail.is_empty() {
        s
    } else {
        format!("{s}: {detail}")
    }
}

pub(super) fn required(path: &str, detail: &str) -> String {
    with_detail(format!("{path}: Required value"), detail)
}

pub(super) fn forbidden(path: &str, detail: &str) -> String {
    with_detail(format!("{path}: Forbidden"), detail)
}

pub(super) fn invalid(path: &str, value: Val, detail: &str) -> String {
    with_detail(format!("{path}: Invalid value: {value}"), detail)
}

pub(super) fn duplicate(path: &str, value: Val) -> String {
    format!("{path}: Duplicate value: {value}")
}

pub(super) fn not_supported(path: &str, value: Val, supported: &[&str]) -> String {
    let list: Vec<String> = supported.iter().map(|s| quote(s)).collect();
    format!(
        "{path}: Unsupported value: {value}: supported values: {}",
        list.join(", ")
    )
}

/// `ErrorList.ToAggregate().Error()`: duplicates dropped, several errors
/// bracketed and comma-separated.
pub(super) fn aggregate(errs: Vec<String>) -> String {
    let mut seen = BTreeSet::new();
    let errs: Vec<String> = errs
        .into_iter()
        .filter(|e| seen.insert(e.clone()))
        .collect();
    match errs.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", errs.join(", ")),
    }
}
