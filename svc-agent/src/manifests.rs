//! The standalone source: Kubernetes objects read from a directory of YAML
//! (or JSON) files, several objects per file separated by `---`.
//!
//! Reading never fails as a whole: a file or document that cannot be
//! parsed is reported, naming the file, and everything else is used.
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::Deserialize as _;

/// The objects in a manifests directory, in file order.
#[derive(Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Files or documents that could not be used, with why.
    pub errors: Vec<String>,
}

pub fn read_dir(dir: &Path) -> Objects {
    let mut objects = Objects::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) => {
            objects.errors.push(format!("{}: {e}", dir.display()));
            return objects;
        }
    };
    files.retain(|p| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) && !p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse_into(&text, &file.display().to_string(), &mut objects),
            Err(e) => objects.errors.push(format!("{}: {e}", file.display())),
        }
    }
    objects
}

/// Parses one file's documents into `objects`.
pub fn parse_into(text: &str, origin: &str, objects: &mut Objects) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(serde_yaml_ng::Value::Null) => continue, // empty document
            Ok(v) => v,
            Err(e) => {
                objects
                    .errors
                    .push(format!("{origin}: document {}: {e}", i + 1));
                // A syntax error ends the stream: nothing after it parses.
                break;
            }
        };
        let json = match serde_json::to_value(&value) {
            Ok(j) => j,
            Err(e) => {
                objects
                    .errors
                    .push(format!("{origin}: document {}: {e}", i + 1));
                continue;
            }
        };
        add(json, origin, i + 1, objects);
    }
}

fn add(json: serde_json::Value, origin: &str, doc: usize, objects: &mut Objects) {
    let kind = json
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let fail = |e: serde_json::Error| format!("{origin}: document {doc}: {kind}: {e}");
    match kind.as_str() {
        "Service" => match serde_json::from_value::<Service>(json) {
            Ok(mut s) => {
                default_namespace(&mut s.metadata.namespace);
                objects.services.push(s);
            }
            Err(e) => objects.errors.push(fail(e)),
        },
        "Pod" => match serde_json::from_value::<Pod>(json) {
            Ok(mut p) => {
                default_namespace(&mut p.metadata.namespace);
                objects.pods.push(p);
            }
            Err(e) => objects.errors.push(fail(e)),
        },
        "EndpointSlice" => match serde_json::from_value::<EndpointSlice>(json) {
            Ok(mut s) => {
                default_namespace(&mut s.metadata.namespace);
                objects.endpoint_slices.push(s);
            }
            Err(e) => objects.errors.push(fail(e)),
        },
        "List" => {
            for item in json
                .get("items")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
            {
                add(item.clone(), origin, doc, objects);
            }
        }
        // Deployments, ConfigMaps, ...: not this proxy's business.
        _ => {}
    }
}

fn default_namespace(ns: &mut Option<String>) {
    if ns.as_deref().unwrap_or("").is_empty() {
        *ns = Some("default".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_several_kinds_and_reports_bad_documents() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata:
  name: nginx
  labels: {app: web-server}
spec:
  containers:
  - name: nginx
    image: nginx:stable
    ports:
    - containerPort: 80
      name: pod-port
---
apiVersion: v1
kind: Service
metadata:
  name: first-service
spec:
  selector: {app: web-server}
  ports:
  - name: service-port
    protocol: TCP
    port: 80
    targetPort: pod-port
---
apiVersion: v1
kind: Service
metadata: {name: broken}
spec:
  ports: "not a list"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"#;
        let mut o = Objects::default();
        parse_into(text, "a.yaml", &mut o);
        assert_eq!(o.pods.len(), 1);
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.services[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(o.errors.len(), 1, "{:?}", o.errors);
        assert!(
            o.errors[0].starts_with("a.yaml: document 3: Service: "),
            "{}",
            o.errors[0]
        );
    }

    #[test]
    fn syntax_errors_name_the_file_and_keep_earlier_documents() {
        let mut o = Objects::default();
        parse_into(
            "kind: Service\nmetadata: {name: ok}\n---\nkind: [unclosed\n",
            "b.yaml",
            &mut o,
        );
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.errors.len(), 1);
        assert!(
            o.errors[0].starts_with("b.yaml: document 2: "),
            "{}",
            o.errors[0]
        );
    }
}
