//! Label and field selectors, parsed and matched as the API server does.
//!
//! Label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, joined by `,` (AND). As in Kubernetes, `k!=v` and
//! `k notin (...)` also match objects without the label.
//!
//! Field selectors: `field=v`, `field==v`, `field!=v` joined by `,`. Only
//! `metadata.name` and `metadata.namespace` are accepted: every kind serves
//! those two, so a client that works here also works on a real cluster
//! (which answers 400 for fields a kind does not index, as we do).
use serde_json::{Map, Value};

/// What a list or watch is restricted to.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            labels: LabelSelector::parse(labels.unwrap_or(""))?,
            fields: FieldSelector::parse(fields.unwrap_or(""))?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj["metadata"]["labels"].as_object()) && self.fields.matches(obj)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    NotExists,
    /// `=`, `==` and `in`.
    In(Vec<String>),
    /// `!=` and `notin`.
    NotIn(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Bang,
    Eq,
    NotEq,
    Comma,
    Open,
    Close,
}

fn lex(s: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' => toks.push(Tok::Comma),
            '(' => toks.push(Tok::Open),
            ')' => toks.push(Tok::Close),
            '=' => {
                // `=` and `==` mean the same.
                chars.next_if_eq(&'=');
                toks.push(Tok::Eq);
            }
            '!' => toks.push(if chars.next_if_eq(&'=').is_some() {
                Tok::NotEq
            } else {
                Tok::Bang
            }),
            c => {
                let mut word = c.to_string();
                while let Some(c) = chars.next_if(|c| !c.is_whitespace() && !"!=,()".contains(*c)) {
                    word.push(c);
                }
                toks.push(Tok::Word(word));
            }
        }
    }
    toks
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

fn valid_value(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

type Toks = std::iter::Peekable<std::vec::IntoIter<Tok>>;

fn key(toks: &mut Toks) -> Result<String, String> {
    match toks.next() {
        Some(Tok::Word(k)) if valid_key(&k) => Ok(k),
        other => Err(format!("expected a label key, found {other:?}")),
    }
}

fn value(word: String) -> Result<String, String> {
    if valid_value(&word) {
        Ok(word)
    } else {
        Err(format!("invalid label value {word:?}"))
    }
}

/// `( v1, v2, ... )`, at least one value.
fn value_set(toks: &mut Toks) -> Result<Vec<String>, String> {
    if toks.next() != Some(Tok::Open) {
        return Err("expected '(' after in/notin".into());
    }
    let mut values = Vec::new();
    loop {
        match toks.next() {
            Some(Tok::Word(w)) => values.push(value(w)?),
            other => return Err(format!("expected a value, found {other:?}")),
        }
        match toks.next() {
            Some(Tok::Comma) => {}
            Some(Tok::Close) => return Ok(values),
            other => return Err(format!("expected ',' or ')', found {other:?}")),
        }
    }
}

fn requirement(toks: &mut Toks) -> Result<Requirement, String> {
    if toks.next_if_eq(&Tok::Bang).is_some() {
        return Ok(Requirement {
            key: key(toks)?,
            op: Op::NotExists,
        });
    }
    let key = key(toks)?;
    let op = match toks.peek() {
        None | Some(Tok::Comma) => Op::Exists,
        Some(Tok::Eq | Tok::NotEq) => {
            let negated = toks.next() == Some(Tok::NotEq);
            // An empty value (`k=`) is valid: it matches an empty label.
            let v = match toks.next_if(|t| matches!(t, Tok::Word(_))) {
                Some(Tok::Word(w)) => value(w)?,
                _ => String::new(),
            };
            if negated {
                Op::NotIn(vec![v])
            } else {
                Op::In(vec![v])
            }
        }
        Some(Tok::Word(w)) if w == "in" || w == "notin" => {
            let negated = w == "notin";
            toks.next();
            let values = value_set(toks)?;
            if negated {
                Op::NotIn(values)
            } else {
                Op::In(values)
            }
        }
        Some(other) => return Err(format!("unexpected {other:?} after key {key:?}")),
    };
    Ok(Requirement { key, op })
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut toks = lex(s).into_iter().peekable();
        let mut reqs = Vec::new();
        if toks.peek().is_none() {
            return Ok(Self(reqs));
        }
        loop {
            reqs.push(requirement(&mut toks)?);
            match toks.next() {
                None => return Ok(Self(reqs)),
                Some(Tok::Comma) => {}
                Some(other) => return Err(format!("unexpected {other:?} in label selector")),
            }
        }
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.0.iter().all(|r| {
            let got = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match (&r.op, got) {
                (Op::Exists, got) => got.is_some(),
                (Op::NotExists, got) => got.is_none(),
                (Op::In(vs), Some(v)) => vs.iter().any(|x| x == v),
                (Op::In(_), None) => false,
                (Op::NotIn(vs), Some(v)) => !vs.iter().any(|x| x == v),
                (Op::NotIn(_), None) => true,
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct FieldTerm {
    field: &'static str,
    value: String,
    equal: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct FieldSelector(Vec<FieldTerm>);

const FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let field = FIELDS
                .into_iter()
                .find(|f| *f == field.trim())
                .ok_or_else(|| format!("field label not supported: {}", field.trim()))?;
            terms.push(FieldTerm {
                field,
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|t| {
            // Both supported fields live directly under metadata.
            let key = t.field.trim_start_matches("metadata.");
            // Cluster-scoped objects have no namespace: it matches "".
            let got = obj["metadata"][key].as_str().unwrap_or("");
            (got == t.value) == t.equal
        })
    }

    /// `field=value`: what a URL's namespace or object name means.
    pub fn pinned(field: &'static str, value: &str) -> Self {
        Self(vec![FieldTerm {
            field,
            value: value.to_string(),
            equal: true,
        }])
    }

    pub fn and(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "prod", "labels": labels}})
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn matches(s: &str, labels: Value) -> bool {
        sel(s).matches(obj(labels)["metadata"]["labels"].as_object())
    }

    #[test]
    fn parses_every_operator() {
        let parsed = sel("a, !b, c=1, d==2, e!=3, f in (x, y), g notin (z)");
        let ops: Vec<_> = parsed.0.iter().map(|r| (r.key.as_str(), &r.op)).collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ops,
            [
                ("a", &Op::Exists),
                ("b", &Op::NotExists),
                ("c", &Op::In(s(&["1"]))),
                ("d", &Op::In(s(&["2"]))),
                ("e", &Op::NotIn(s(&["3"]))),
                ("f", &Op::In(s(&["x", "y"]))),
                ("g", &Op::NotIn(s(&["z"]))),
            ]
        );
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches("", json!(null)));
        assert!(matches("  ", json!({"a": "b"})));
    }

    #[test]
    fn existence() {
        assert!(matches("app", json!({"app": "web"})));
        assert!(!matches("app", json!({})));
        assert!(!matches("!app", json!({"app": "web"})));
        assert!(matches("!app", json!(null)));
    }

    #[test]
    fn service_proxy_selector() {
        let s = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
        assert!(matches(s, json!({"app": "web"})));
        assert!(!matches(
            s,
            json!({"service.kubernetes.io/service-proxy-name": "other"})
        ));
        assert!(!matches(s, json!({"service.kubernetes.io/headless": ""})));
    }

    #[test]
    fn equality_and_inequality() {
        assert!(matches("tier=db", json!({"tier": "db"})));
        assert!(matches("tier==db", json!({"tier": "db"})));
        assert!(!matches("tier=db", json!({"tier": "web"})));
        assert!(!matches("tier=db", json!({})));
        assert!(matches("tier!=db", json!({"tier": "web"})));
        // As in Kubernetes: an absent label is "not equal".
        assert!(matches("tier!=db", json!({})));
        assert!(!matches("tier!=db", json!({"tier": "db"})));
        assert!(matches("tier=", json!({"tier": ""})));
    }

    #[test]
    fn set_operators() {
        assert!(matches("env in (a,b)", json!({"env": "b"})));
        assert!(!matches("env in (a,b)", json!({"env": "c"})));
        assert!(!matches("env in (a,b)", json!({})));
        assert!(matches("env notin (a,b)", json!({"env": "c"})));
        assert!(matches("env notin (a,b)", json!({})));
        assert!(!matches("env notin (a,b)", json!({"env": "a"})));
    }

    #[test]
    fn comma_is_and() {
        let s = "app=web,env in (prod),!canary";
        assert!(matches(s, json!({"app": "web", "env": "prod"})));
        assert!(!matches(
            s,
            json!({"app": "web", "env": "prod", "canary": "1"})
        ));
        assert!(!matches(s, json!({"app": "db", "env": "prod"})));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "a b",
            "=x",
            "a in ()",
            "a in (x",
            "a in x",
            "a,",
            ",a",
            "!",
            "a=b=c",
            "a=(b)",
            "a=b c",
            "a==b,!c=d",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        let f = |s: &str| FieldSelector::parse(s).unwrap().matches(&o);
        assert!(f("metadata.name=web"));
        assert!(f("metadata.name==web,metadata.namespace=prod"));
        assert!(!f("metadata.name=db"));
        assert!(f("metadata.name!=db"));
        assert!(!f("metadata.namespace!=prod"));
        assert!(f(""));
        assert!(FieldSelector::parse("spec.type=ClusterIP").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
        let node = json!({"metadata": {"name": "n1"}});
        assert!(
            FieldSelector::parse("metadata.namespace=")
                .unwrap()
                .matches(&node)
        );
    }

    #[test]
    fn filter_combines_both() {
        let f = Filter::parse(Some("app=web"), Some("metadata.namespace=prod")).unwrap();
        assert!(f.matches(&obj(json!({"app": "web"}))));
        assert!(!f.matches(&obj(json!({"app": "db"}))));
        let other_ns =
            json!({"metadata": {"name": "web", "namespace": "dev", "labels": {"app": "web"}}});
        assert!(!f.matches(&other_ns));
    }
}
