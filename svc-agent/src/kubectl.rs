//! kubectl's output for Services, reproduced byte for byte where we can:
//! `get services` (table, wide, json, yaml) and `describe service`.
//!
//! The formatting follows kubectl's sources: `printService` and
//! `getServiceExternalIP` in kubernetes' `pkg/printers/internalversion`,
//! `describeService` and `DescribeEvents` in kubectl's `pkg/describe`,
//! `HumanDuration` in apimachinery, and Go's `text/tabwriter` as kubectl
//! configures it. Everything here is pure: the caller supplies `now`.
use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{LoadBalancerIngress, Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::view::{EventView, ServiceView};

/// The `-o` flag of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// `svc-agent get services [-n NS | -A] [-o wide|json|yaml]`.
/// `all_namespaces` adds kubectl's leading NAMESPACE column. `now` is unix
/// seconds (for AGE).
///
/// Services are listed by namespace then name, the order the API server
/// lists them in. With no services the table is empty: kubectl prints its
/// "No resources found" on stderr, which is the caller's to do.
pub fn get_services(
    views: &[ServiceView],
    output: Output,
    all_namespaces: bool,
    now: u64,
) -> String {
    let mut views: Vec<&ServiceView> = views.iter().collect();
    views.sort_by(|a, b| {
        let key = |v: &ServiceView| {
            (
                v.service.metadata.namespace.clone(),
                v.service.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    match output {
        Output::Table => service_table(&views, false, all_namespaces, now),
        Output::Wide => service_table(&views, true, all_namespaces, now),
        Output::Json => {
            // kubectl indents by four spaces (Go's json.MarshalIndent).
            let mut json = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut json, formatter);
            service_list(&views)
                .serialize(&mut serializer)
                .expect("a JSON value always serializes");
            go_json_escape(&String::from_utf8(json).expect("serde_json writes UTF-8")) + "\n"
        }
        Output::Yaml => serde_yaml_ng::to_string(&service_list(&views))
            .expect("a JSON value always serializes as YAML"),
    }
}

/// `svc-agent describe service NAME`: kubectl describe's layout.
pub fn describe_service(view: &ServiceView, now: u64) -> String {
    let service = &view.service;
    let meta = &service.metadata;
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let service_type = service_type(spec);
    let mut text = String::new();
    let mut line = |label: &str, value: &str| text.push_str(&format!("{label}:\t{value}\n"));

    line("Name", meta.name.as_deref().unwrap_or_default());
    line("Namespace", meta.namespace.as_deref().unwrap_or_default());
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    line(
        "Labels",
        &multiline(labels.iter().map(|(k, v)| format!("{k}={v}"))),
    );
    line(
        "Annotations",
        &annotations(meta.annotations.as_ref().unwrap_or(&empty)),
    );
    line("Selector", &format_labels(spec.selector.as_ref()));
    line("Type", service_type);
    if let Some(policy) = &spec.ip_family_policy {
        line("IP Family Policy", policy);
    }
    line(
        "IP Families",
        &join_or_none(spec.ip_families.as_deref().unwrap_or_default(), ","),
    );
    line("IP", spec.cluster_ip.as_deref().unwrap_or_default());
    line(
        "IPs",
        &join_or_none(spec.cluster_ips.as_deref().unwrap_or_default(), ","),
    );
    if let Some(ips) = spec.external_ips.as_ref().filter(|ips| !ips.is_empty()) {
        line("External IPs", &ips.join(","));
    }
    if let Some(ip) = spec.load_balancer_ip.as_ref().filter(|ip| !ip.is_empty()) {
        line("Desired LoadBalancer IP", ip);
    }
    if let Some(name) = spec.external_name.as_ref().filter(|name| !name.is_empty()) {
        line("External Name", name);
    }
    let ingress = load_balancer_ingress(service);
    if !ingress.is_empty() {
        let list: Vec<String> = ingress
            .iter()
            .map(|i| match (&i.ip, &i.ip_mode) {
                (Some(ip), Some(mode)) if !ip.is_empty() => format!("{ip} ({mode})"),
                (Some(ip), None) if !ip.is_empty() => ip.clone(),
                _ => i.hostname.clone().unwrap_or_default(),
            })
            .collect();
        line("LoadBalancer Ingress", &list.join(", "));
    }
    for port in spec.ports.iter().flatten() {
        let name = port
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("<unset>");
        let protocol = protocol(port);
        // The name is a cell of its own, so tabwriter pads it by two spaces.
        line("Port", &format!("{name}\t{}/{protocol}", port.port));
        let target = match &port.target_port {
            Some(IntOrString::Int(number)) => number.to_string(),
            Some(IntOrString::String(name)) => name.clone(),
            // The API server defaults targetPort to port.
            None => port.port.to_string(),
        };
        line("TargetPort", &format!("{target}/{protocol}"));
        if let Some(app_protocol) = &port.app_protocol {
            line("AppProtocol", app_protocol);
        }
        if let Some(node_port) = port.node_port.filter(|&p| p != 0) {
            line("NodePort", &format!("{name}\t{node_port}/{protocol}"));
        }
        line("Endpoints", &port_endpoints(view, port));
    }
    line(
        "Session Affinity",
        spec.session_affinity.as_deref().unwrap_or("None"),
    );
    // The API server sets these two policies only for the types they apply
    // to; fill in its defaults so an unset field reads as a served one.
    let external_policy = match (&spec.external_traffic_policy, service_type) {
        (Some(policy), _) if !policy.is_empty() => Some(policy.as_str()),
        (_, "NodePort" | "LoadBalancer") => Some("Cluster"),
        _ => None,
    };
    if let Some(policy) = external_policy {
        line("External Traffic Policy", policy);
    }
    let internal_policy = match (&spec.internal_traffic_policy, service_type) {
        (Some(policy), _) => Some(policy.as_str()),
        (None, "ExternalName") => None,
        (None, _) => Some("Cluster"),
    };
    if let Some(policy) = internal_policy {
        line("Internal Traffic Policy", policy);
    }
    if let Some(port) = spec.health_check_node_port.filter(|&p| p != 0) {
        line("HealthCheck NodePort", &port.to_string());
    }
    if let Some(ranges) = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
    {
        line("LoadBalancer Source Ranges", &ranges.join(","));
    }
    if let Some(distribution) = &spec.traffic_distribution {
        line("Traffic Distribution", distribution);
    }
    if view.events.is_empty() {
        line("Events", "<none>");
        return tabwrite(&text, 0, 2);
    }
    // kubectl flushes its tabwriter before the events table, so the table's
    // columns are aligned on their own.
    tabwrite(&text, 0, 2) + "Events:\n" + &tabwrite(&events_table(&view.events, now), 0, 2)
}

/// kubectl's age format ("5s", "2m29s", "23h", "26h", "103d", "6h21m", ...),
/// from a duration in seconds: apimachinery's `HumanDuration`, which keeps
/// two or three significant figures.
pub fn age(seconds: u64) -> String {
    let minutes = seconds / 60;
    let hours = seconds / 3600;
    let days = hours / 24;
    let years = days / 365;
    let with_rest = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if seconds < 2 * 60 {
        format!("{seconds}s")
    } else if minutes < 10 {
        with_rest(minutes, "m", seconds % 60, "s")
    } else if minutes < 3 * 60 {
        format!("{minutes}m")
    } else if hours < 8 {
        with_rest(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 8 * 24 {
        with_rest(days, "d", hours % 24, "h")
    } else if hours < 2 * 365 * 24 {
        format!("{days}d")
    } else if hours < 8 * 365 * 24 {
        with_rest(years, "y", days % 365, "d")
    } else {
        format!("{years}y")
    }
}

/// kubectl's `translateTimestampSince`: the age of a unix timestamp.
fn age_since(timestamp: Option<i64>, now: u64) -> String {
    let Some(timestamp) = timestamp else {
        return "<unknown>".into();
    };
    let elapsed = now as i64 - timestamp;
    // HumanDuration tolerates one second of clock skew, no more.
    match elapsed {
        ..-1 => "<invalid>".into(),
        -1 => "0s".into(),
        _ => age(elapsed as u64),
    }
}

fn service_table(views: &[&ServiceView], wide: bool, all_namespaces: bool, now: u64) -> String {
    if views.is_empty() {
        return String::new();
    }
    let mut header = vec![
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ];
    if wide {
        header.extend(["SELECTOR", "ENDPOINTS"]);
    }
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut text = header.join("\t") + "\n";
    for view in views {
        let service = &view.service;
        let default_spec = ServiceSpec::default();
        let spec = service.spec.as_ref().unwrap_or(&default_spec);
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|port| match port.node_port.filter(|&p| p > 0) {
                Some(node_port) => format!("{}:{node_port}/{}", port.port, protocol(port)),
                None => format!("{}/{}", port.port, protocol(port)),
            })
            .collect();
        let mut row = vec![
            service.metadata.name.clone().unwrap_or_default(),
            service_type(spec).to_string(),
            cluster_ip(spec),
            external_ip(service, wide),
            join_or_none(&ports, ","),
            age_since(
                service
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
                now,
            ),
        ];
        if wide {
            let addresses: Vec<String> = view
                .endpoints
                .iter()
                .flat_map(|e| &e.addresses)
                .map(|a| a.to_string())
                .collect();
            row.push(format_labels(spec.selector.as_ref()));
            row.push(first_three(&addresses));
        }
        if all_namespaces {
            row.insert(0, service.metadata.namespace.clone().unwrap_or_default());
        }
        text += &(row.join("\t") + "\n");
    }
    // cli-runtime's table tabwriter: minimum width 6, padding 3.
    tabwrite(&text, 6, 3)
}

/// What `get -o json|yaml` prints: the Services wrapped in a List, every map's
/// keys sorted as kubectl's unstructured objects marshal them.
fn service_list(views: &[&ServiceView]) -> Value {
    let items: Vec<Value> = views
        .iter()
        .map(|v| serde_json::to_value(&v.service).expect("a Service always serializes"))
        .collect();
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

/// Go's `encoding/json` escapes these for safe embedding in HTML, and
/// kubectl prints them so. They occur only inside JSON strings, so a plain
/// replacement is exact.
fn go_json_escape(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// `spec.type`, which the API server defaults to ClusterIP.
fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("ClusterIP")
}

fn protocol(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// The CLUSTER-IP cell: the primary cluster IP ("None" when headless), or
/// `<none>` when there is none (ExternalName).
fn cluster_ip(spec: &ServiceSpec) -> String {
    let primary = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .or(spec.cluster_ip.as_ref());
    primary
        .filter(|ip| !ip.is_empty())
        .cloned()
        .unwrap_or_else(|| "<none>".into())
}

fn load_balancer_ingress(service: &Service) -> &[LoadBalancerIngress] {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    ingress.map(Vec::as_slice).unwrap_or_default()
}

/// kubectl's `getServiceExternalIP`.
fn external_ip(service: &Service, wide: bool) -> String {
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let external_ips = spec.external_ips.as_deref().unwrap_or_default();
    match service_type(spec) {
        "ClusterIP" | "NodePort" => join_or_none(external_ips, ","),
        "LoadBalancer" => {
            // Ingress IPs (else hostnames), deduplicated and sorted, then
            // clipped to 16 bytes outside `-o wide`, as kubectl does.
            let mut addresses: Vec<&str> = load_balancer_ingress(service)
                .iter()
                .filter_map(|i| {
                    [&i.ip, &i.hostname]
                        .into_iter()
                        .flatten()
                        .find(|s| !s.is_empty())
                })
                .map(String::as_str)
                .collect();
            addresses.sort();
            addresses.dedup();
            let mut ingress = addresses.join(",");
            const LOAD_BALANCER_WIDTH: usize = 16;
            if !wide && ingress.len() > LOAD_BALANCER_WIDTH {
                ingress = format!("{}...", &ingress[..LOAD_BALANCER_WIDTH - 3]);
            }
            // kubectl splits the clipped list again to append the external IPs.
            let ingress = ingress.split(',').filter(|s| !s.is_empty());
            let all: Vec<&str> = ingress
                .chain(external_ips.iter().map(String::as_str))
                .collect();
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => spec.external_name.clone().unwrap_or_default(),
        _ => "<unknown>".into(),
    }
}

/// The Endpoints line of one port in describe: its ready addresses, the
/// first three then a count.
fn port_endpoints(view: &ServiceView, port: &ServicePort) -> String {
    let name = port.name.as_deref().unwrap_or_default();
    let addresses: Vec<String> = view
        .endpoints
        .iter()
        .filter(|e| e.port_name == name)
        .flat_map(|e| &e.addresses)
        .map(|a| a.to_string())
        .collect();
    first_three(&addresses)
}

/// kubectl's endpoint list: at most three entries, then ` + N more...`.
fn first_three(addresses: &[String]) -> String {
    match addresses.len() {
        0 => "<none>".into(),
        1..=3 => addresses.join(","),
        n => format!("{} + {} more...", addresses[..3].join(","), n - 3),
    }
}

/// apimachinery's `labels.FormatLabels`: `k=v` pairs sorted by key.
fn format_labels(labels: Option<&BTreeMap<String, String>>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    join_or_none(&pairs, ",")
}

fn join_or_none(items: &[String], separator: &str) -> String {
    if items.is_empty() {
        "<none>".into()
    } else {
        items.join(separator)
    }
}

/// Values printed one per line, each further line starting with an empty
/// cell so tabwriter aligns it under the first.
fn multiline(values: impl Iterator<Item = String>) -> String {
    let values: Vec<String> = values.collect();
    join_or_none(&values, "\n\t")
}

/// kubectl's `printAnnotationsMultiline`: `key: value`, or for a long or
/// multi-line value the key alone then each line, shortened, indented.
fn annotations(annotations: &BTreeMap<String, String>) -> String {
    // kubectl hides this one; it repeats the whole object.
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    const MAX_LEN: usize = 140;
    let shorten = |s: &str| match s.char_indices().nth(MAX_LEN - 2) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    };
    multiline(
        annotations
            .iter()
            .filter(|(key, _)| *key != LAST_APPLIED)
            .map(|(key, value)| {
                let value = value.strip_suffix('\n').unwrap_or(value);
                if value.len() + key.len() + 2 > MAX_LEN || value.contains('\n') {
                    let lines: Vec<String> = value
                        .split('\n')
                        .map(|s| format!("\t  {}", shorten(s)))
                        .collect();
                    format!("{key}:\n{}", lines.join("\n"))
                } else {
                    format!("{key}: {value}")
                }
            }),
    )
}

/// kubectl's events table, oldest (by last occurrence) first, as
/// tab-separated text.
fn events_table(events: &[EventView], now: u64) -> String {
    let mut events: Vec<&EventView> = events.iter().collect();
    events.sort_by_key(|e| e.last_seen);
    let mut text =
        String::from("  Type\tReason\tAge\tFrom\tMessage\n  ----\t------\t----\t----\t-------\n");
    for event in events {
        let first = age_since(Some(event.first_seen as i64), now);
        let interval = if event.count > 1 {
            format!(
                "{} (x{} over {first})",
                age_since(Some(event.last_seen as i64), now),
                event.count
            )
        } else {
            first
        };
        let message = event.message.trim();
        text += &format!(
            "  {}\t{}\t{interval}\t{}\t{message}\n",
            event.type_, event.reason, event.source
        );
    }
    text
}

/// Go's `text/tabwriter` with space padding and left alignment, as kubectl
/// uses it. A cell is text terminated by a tab; the text after a line's last
/// tab belongs to no column and is not padded. A column's width is settled
/// per block of consecutive lines that have a cell in that column: the
/// widest such cell plus `padding`, at least `min_width`.
fn tabwrite(text: &str, min_width: usize, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_terminator('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut out = String::new();
    format_block(&lines, &mut Vec::new(), min_width, padding, &mut out);
    out
}

/// Lays out `lines`, whose columns left of `widths.len()` are already
/// sized; recursion sizes one more column per level (Go's `format`).
fn format_block(
    lines: &[Vec<&str>],
    widths: &mut Vec<usize>,
    min_width: usize,
    padding: usize,
    out: &mut String,
) {
    let column = widths.len();
    let has_column = |line: &Vec<&str>| column + 1 < line.len();
    let mut written = 0;
    let mut i = 0;
    while i < lines.len() {
        if !has_column(&lines[i]) {
            i += 1;
            continue;
        }
        write_lines(&lines[written..i], widths, out);
        let start = i;
        let mut width = min_width;
        while i < lines.len() && has_column(&lines[i]) {
            width = width.max(lines[i][column].chars().count() + padding);
            i += 1;
        }
        widths.push(width);
        format_block(&lines[start..i], widths, min_width, padding, out);
        widths.pop();
        written = i;
    }
    write_lines(&lines[written..], widths, out);
}

fn write_lines(lines: &[Vec<&str>], widths: &[usize], out: &mut String) {
    for line in lines {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            // Never true for a line's last cell: it lies right of every column.
            if let Some(width) = widths.get(j) {
                out.push_str(&" ".repeat(width - cell.chars().count()));
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::PortEndpoints;

    /// 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000;

    /// The RFC 3339 time `seconds_ago` before `NOW`.
    fn ago(seconds_ago: u64) -> String {
        k8s_openapi::jiff::Timestamp::from_second((NOW - seconds_ago) as i64)
            .unwrap()
            .to_string()
    }

    fn view(service: Value) -> ServiceView {
        ServiceView {
            service: serde_json::from_value(service).unwrap(),
            endpoints: vec![],
            events: vec![],
        }
    }

    fn cluster_ip_service(namespace: &str, name: &str, ip: &str, seconds_ago: u64) -> ServiceView {
        view(json!({
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ago(seconds_ago)},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"port": 80, "targetPort": 9376, "protocol": "TCP"}]},
        }))
    }

    #[test]
    fn table_of_a_cluster_ip_service() {
        let views = [cluster_ip_service("default", "web", "10.96.0.10", 149)];
        assert_eq!(
            get_services(&views, Output::Table, false, NOW),
            "NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE\n\
             web    ClusterIP   10.96.0.10   <none>        80/TCP    2m29s\n"
        );
    }

    #[test]
    fn table_of_every_type_across_namespaces() {
        let views = [
            view(json!({
                "metadata": {"name": "lb", "namespace": "prod", "creationTimestamp": ago(103 * 86400)},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"],
                         "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]},
                "status": {"loadBalancer": {}},
            })),
            view(json!({
                "metadata": {"name": "db", "namespace": "prod", "creationTimestamp": ago(59)},
                "spec": {"type": "ExternalName", "externalName": "db.example.com"},
            })),
            view(json!({
                "metadata": {"name": "headless", "namespace": "prod", "creationTimestamp": ago(26 * 3600)},
                "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
                         "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                   {"name": "dns-tcp", "port": 53}]},
            })),
            cluster_ip_service("default", "web", "10.96.0.10", 149),
            view(json!({
                "metadata": {"name": "nodeport", "namespace": "default", "creationTimestamp": ago(22860)},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                         "ports": [{"port": 8080, "nodePort": 30007, "protocol": "TCP"}]},
            })),
        ];
        // Sorted by namespace then name; a protocol-less port reads TCP.
        assert_eq!(
            get_services(&views, Output::Table, true, NOW),
            "NAMESPACE   NAME       TYPE           CLUSTER-IP   EXTERNAL-IP      PORT(S)          AGE\n\
             default     nodeport   NodePort       10.96.0.20   <none>           8080:30007/TCP   6h21m\n\
             default     web        ClusterIP      10.96.0.10   <none>           80/TCP           2m29s\n\
             prod        db         ExternalName   <none>       db.example.com   <none>           59s\n\
             prod        headless   ClusterIP      None         <none>           53/UDP,53/TCP    26h\n\
             prod        lb         LoadBalancer   10.96.0.30   <pending>        443:31443/TCP    103d\n"
        );
    }

    #[test]
    fn external_ip_of_load_balancers() {
        let lb = |ingress: Value, external_ips: Value| {
            view(json!({
                "metadata": {"name": "lb"},
                "spec": {"type": "LoadBalancer", "externalIPs": external_ips},
                "status": {"loadBalancer": {"ingress": ingress}},
            }))
            .service
        };
        let one = lb(json!([{"ip": "203.0.113.10"}]), json!([]));
        assert_eq!(external_ip(&one, false), "203.0.113.10");
        // No ingress yet: the external IPs stand in for it.
        let none = lb(json!([]), json!(["198.51.100.7"]));
        assert_eq!(external_ip(&none, false), "198.51.100.7");
        // Sorted, deduplicated, clipped to 16 bytes outside -o wide, and the
        // clipped list split again before the external IPs, as kubectl does.
        let two = lb(
            json!([{"hostname": "lb.example.com"}, {"ip": "203.0.113.10"}, {"ip": "203.0.113.10"}]),
            json!(["198.51.100.7"]),
        );
        assert_eq!(external_ip(&two, false), "203.0.113.10,...,198.51.100.7");
        assert_eq!(
            external_ip(&two, true),
            "203.0.113.10,lb.example.com,198.51.100.7"
        );
    }

    #[test]
    fn wide_table_adds_selector_and_endpoints() {
        let mut web = cluster_ip_service("default", "web", "10.96.0.10", 149);
        web.service.spec.as_mut().unwrap().selector = Some(
            [("tier", "frontend"), ("app", "web")]
                .map(|(k, v)| (k.into(), v.into()))
                .into(),
        );
        let addresses = [
            "10.244.2.8:9376",
            "10.244.0.5:9376",
            "10.244.0.6:9376",
            "10.244.1.7:9376",
        ];
        web.endpoints = vec![PortEndpoints {
            port_name: String::new(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }];
        let mut api = cluster_ip_service("default", "api", "10.96.0.11", 5);
        api.service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 8080;
        assert_eq!(
            get_services(&[web, api], Output::Wide, false, NOW),
            "NAME   TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)    AGE     SELECTOR                ENDPOINTS\n\
             api    ClusterIP   10.96.0.11   <none>        8080/TCP   5s      <none>                  <none>\n\
             web    ClusterIP   10.96.0.10   <none>        80/TCP     2m29s   app=web,tier=frontend   \
             10.244.2.8:9376,10.244.0.5:9376,10.244.0.6:9376 + 1 more...\n"
        );
    }

    #[test]
    fn no_services_print_no_table() {
        assert_eq!(get_services(&[], Output::Table, false, NOW), "");
        assert_eq!(
            get_services(&[], Output::Json, false, NOW),
            "{\n    \"apiVersion\": \"v1\",\n    \"items\": [],\n    \"kind\": \"List\",\n    \
             \"metadata\": {\n        \"resourceVersion\": \"\"\n    }\n}\n"
        );
    }

    #[test]
    fn json_is_a_sorted_list_indented_by_four() {
        let mut web = cluster_ip_service("default", "web", "10.96.0.10", 149);
        web.service.metadata.annotations =
            Some([("note".to_string(), "a<b & c>d".to_string())].into());
        let expected = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "annotations": {
                    "note": "a\u003cb \u0026 c\u003ed"
                },
                "creationTimestamp": "2023-11-14T22:10:51Z",
                "name": "web",
                "namespace": "default"
            },
            "spec": {
                "clusterIP": "10.96.0.10",
                "clusterIPs": [
                    "10.96.0.10"
                ],
                "ports": [
                    {
                        "port": 80,
                        "protocol": "TCP",
                        "targetPort": 9376
                    }
                ],
                "type": "ClusterIP"
            }
        }
    ],
    "kind": "List",
    "metadata": {
        "resourceVersion": ""
    }
}
"#;
        let printed = get_services(&[web.clone()], Output::Json, false, NOW);
        assert_eq!(printed, expected);
        // Go's escapes are still JSON: the Service reads back unchanged.
        let list: Value = serde_json::from_str(&printed).unwrap();
        let item: Service = serde_json::from_value(list["items"][0].clone()).unwrap();
        assert_eq!(item, web.service);
    }

    #[test]
    fn yaml_round_trips() {
        let web = cluster_ip_service("default", "web", "10.96.0.10", 149);
        let db = view(json!({
            "metadata": {"name": "db", "namespace": "default", "creationTimestamp": ago(59)},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        }));
        let printed = get_services(&[web.clone(), db.clone()], Output::Yaml, false, NOW);
        assert!(
            printed.starts_with("apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n"),
            "{printed}"
        );
        assert!(
            printed.ends_with("kind: List\nmetadata:\n  resourceVersion: ''\n"),
            "{printed}"
        );
        let list: Value = serde_yaml_ng::from_str(&printed).unwrap();
        assert_eq!(list["kind"], "List");
        let items: Vec<Service> = serde_json::from_value(list["items"].clone()).unwrap();
        assert_eq!(items, [db.service, web.service]);
    }

    #[test]
    fn describe_a_node_port_with_a_named_target_port_and_a_rejection() {
        let mut web = view(json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": ago(700),
                         "labels": {"tier": "frontend", "app": "web"}},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
                     "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 8080, "targetPort": "http-web",
                                "nodePort": 30007, "protocol": "TCP"}],
                     "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
                     "internalTrafficPolicy": "Cluster"},
        }));
        web.endpoints = vec![PortEndpoints {
            port_name: "http".into(),
            addresses: vec![
                "10.244.0.5:8080".parse().unwrap(),
                "10.244.1.6:8080".parse().unwrap(),
            ],
        }];
        let event =
            |type_: &str, reason: &str, message: &str, first: u64, last: u64, count| EventView {
                type_: type_.into(),
                reason: reason.into(),
                message: message.into(),
                first_seen: NOW - first,
                last_seen: NOW - last,
                count,
                source: "svc-agent".into(),
            };
        web.events = vec![
            event(
                "Normal",
                "ClusterIPAllocated",
                "Cluster IP [IPv4]: 10.96.0.20 is allocated",
                700,
                700,
                1,
            ),
            event(
                "Warning",
                "PortAlreadyAllocated",
                "spec.ports[0].nodePort: Invalid value: 30007: provided port is already allocated\n",
                600,
                5,
                3,
            ),
        ];
        assert_eq!(
            describe_service(&web, NOW),
            "Name:                     web\n\
             Namespace:                default\n\
             Labels:                   app=web\n\
             \x20                         tier=frontend\n\
             Annotations:              <none>\n\
             Selector:                 app=web\n\
             Type:                     NodePort\n\
             IP Family Policy:         SingleStack\n\
             IP Families:              IPv4\n\
             IP:                       10.96.0.20\n\
             IPs:                      10.96.0.20\n\
             Port:                     http  8080/TCP\n\
             TargetPort:               http-web/TCP\n\
             NodePort:                 http  30007/TCP\n\
             Endpoints:                10.244.0.5:8080,10.244.1.6:8080\n\
             Session Affinity:         None\n\
             External Traffic Policy:  Cluster\n\
             Internal Traffic Policy:  Cluster\n\
             Events:\n\
             \x20 Type     Reason                Age               From       Message\n\
             \x20 ----     ------                ----              ----       -------\n\
             \x20 Normal   ClusterIPAllocated    11m               svc-agent  Cluster IP [IPv4]: 10.96.0.20 is allocated\n\
             \x20 Warning  PortAlreadyAllocated  5s (x3 over 10m)  svc-agent  \
             spec.ports[0].nodePort: Invalid value: 30007: provided port is already allocated\n"
        );
    }

    #[test]
    fn describe_a_headless_service_without_endpoints_or_events() {
        let dns = view(json!({
            "metadata": {"name": "dns", "namespace": "kube-system",
                         "annotations": {"example.com/owner": "dns-team",
                                         "example.com/notes": "line one\nline two\n",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"selector": {"k8s-app": "kube-dns"},
                     "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
                     "clusterIP": "None", "clusterIPs": ["None"],
                     "ports": [{"port": 53, "targetPort": 53, "protocol": "UDP"}]},
        }));
        // Unset type, session affinity and traffic policy read as the API
        // server's defaults; a multi-line annotation value goes below its key.
        assert_eq!(
            describe_service(&dns, NOW),
            "Name:                     dns\n\
             Namespace:                kube-system\n\
             Labels:                   <none>\n\
             Annotations:              example.com/notes:\n\
             \x20                           line one\n\
             \x20                           line two\n\
             \x20                         example.com/owner: dns-team\n\
             Selector:                 k8s-app=kube-dns\n\
             Type:                     ClusterIP\n\
             IP Family Policy:         SingleStack\n\
             IP Families:              IPv4\n\
             IP:                       None\n\
             IPs:                      None\n\
             Port:                     <unset>  53/UDP\n\
             TargetPort:               53/UDP\n\
             Endpoints:                <none>\n\
             Session Affinity:         None\n\
             Internal Traffic Policy:  Cluster\n\
             Events:                   <none>\n"
        );
    }

    #[test]
    fn ages_as_kubectl_prints_them() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (149, "2m29s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (6 * 3600 + 21 * 60 + 59, "6h21m"),
            (8 * 3600, "8h"),
            (23 * 3600, "23h"),
            (26 * 3600, "26h"),
            (48 * 3600, "2d"),
            (53 * 3600, "2d5h"),
            (8 * 86400, "8d"),
            (103 * 86400, "103d"),
            (2 * 365 * 86400 - 1, "729d"),
            (2 * 365 * 86400 + 10 * 86400, "2y10d"),
            (3 * 365 * 86400, "3y"),
            (9 * 365 * 86400 + 100 * 86400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(age(seconds), expected, "age({seconds})");
        }
        // One second of clock skew reads as now; more is invalid.
        assert_eq!(age_since(Some(NOW as i64 + 1), NOW), "0s");
        assert_eq!(age_since(Some(NOW as i64 + 2), NOW), "<invalid>");
        assert_eq!(age_since(None, NOW), "<unknown>");
    }

    #[test]
    fn tabwriter_sizes_columns_per_block() {
        // Column 0 spans the first two lines; column 1 only the first; the
        // tab-less line ends the block, so the last line starts afresh.
        assert_eq!(
            tabwrite("a\tbb\tc\naaa\tb\nsingle\nx\ty\n", 0, 2),
            "a    bb  c\naaa  b\nsingle\nx  y\n"
        );
    }
}
