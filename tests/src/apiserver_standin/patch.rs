//! JSON merge patch (RFC 7386), `application/merge-patch+json`: what kube's
//! `Patch::Merge` sends, and so what the events `Recorder` uses to add a
//! series to a repeated event.
use serde_json::{Map, Value};

/// Applies `patch` to `target`: objects merge key by key, `null` removes a
/// key, anything else (arrays included) replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn merged(mut target: Value, patch: Value) -> Value {
        merge(&mut target, &patch);
        target
    }

    #[test]
    fn rfc7386_examples() {
        assert_eq!(
            merged(
                json!({"a": "b", "c": {"d": "e", "f": "g"}}),
                json!({"a": "z", "c": {"f": null}})
            ),
            json!({"a": "z", "c": {"d": "e"}})
        );
        assert_eq!(
            merged(json!({"a": ["b"]}), json!({"a": "c"})),
            json!({"a": "c"})
        );
        assert_eq!(
            merged(json!({"a": [1, 2]}), json!({"a": [3]})),
            json!({"a": [3]})
        );
        assert_eq!(merged(json!({"a": "b"}), json!(["c"])), json!(["c"]));
        assert_eq!(
            merged(json!("x"), json!({"a": {"b": null}})),
            json!({"a": {}})
        );
        assert_eq!(
            merged(json!({"e": null}), json!({"a": 1})),
            json!({"e": null, "a": 1})
        );
    }

    #[test]
    fn adds_a_series() {
        let event = json!({"metadata": {"name": "e1"}, "note": "n"});
        let patch = json!({"metadata": {"name": "e1"}, "series": {"count": 2}});
        assert_eq!(
            merged(event, patch),
            json!({"metadata": {"name": "e1"}, "note": "n", "series": {"count": 2}})
        );
    }
}
