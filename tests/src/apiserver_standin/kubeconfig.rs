//! The kubeconfig that points a kube client at the stand-in.
use base64::{Engine as _, engine::general_purpose::STANDARD};

/// YAML with one cluster, one token user and a current context using
/// them. Every value is base64, a URL or a plain token, so double quotes
/// need no escaping.
pub(crate) fn render(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = STANDARD.encode(ca_pem);
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: "{server}"
    certificate-authority-data: "{ca}"
users:
- name: standin
  user:
    token: "{token}"
contexts:
- name: standin
  context:
    cluster: standin
    user: standin
    namespace: default
current-context: standin
"#
    )
}
