//! The string formats the API server checks (names, port numbers and names,
//! addresses), with the messages of k8s.io/apimachinery/pkg/util/validation.
use std::net::IpAddr;

/// `IsValidIP`'s message for what does not parse as an address.
pub(super) const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// `MaxLenError`, as the first of a list of messages.
fn max_len(s: &str, max: usize) -> Vec<String> {
    if s.len() > max {
        vec![format!("must be no more than {max} characters")]
    } else {
        vec![]
    }
}

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub(super) fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = max_len(s, 63);
    if !is_dns1123_label(s) {
        errs.push(if s.split('.').all(is_dns1123_label) {
            "must not contain dots".into()
        } else {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and \
             must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used \
             for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .into()
        });
    }
    errs
}

pub(super) fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = max_len(s, 253);
    if !s.split('.').all(is_dns1123_label) {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
             and must start and end with an alphanumeric character (e.g. 'example.com', regex used for \
             validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .into(),
        );
    }
    errs
}

pub(super) fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = max_len(s, 63);
    if !is_dns1123_label(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        errs.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an \
             alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', \
             regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .into(),
        );
    }
    errs
}

/// `IsValidPortNum`.
pub(super) fn port_num(n: i32) -> Option<&'static str> {
    (!(1..=65535).contains(&n)).then_some("must be between 1 and 65535, inclusive")
}

/// `IsValidPortName`, for a named targetPort.
pub(super) fn port_name(s: &str) -> Vec<String> {
    let mut errs = max_len(s, 15);
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// `ValidateNonSpecialIP`, for externalIPs; "{ip}" stands for the address as
/// given, which the API server prints rather than the parsed one.
pub(super) fn non_special_ip(ip: &IpAddr) -> Vec<&'static str> {
    let mut errs = vec![];
    if ip.is_unspecified() {
        errs.push("may not be unspecified ({ip})");
    }
    if ip.is_loopback() {
        errs.push("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    let (link_local, link_local_multicast) = match ip {
        IpAddr::V4(a) => (a.is_link_local(), a.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(a) => (
            a.is_unicast_link_local(),
            a.octets()[0] == 0xff && a.octets()[1] & 0x0f == 0x02,
        ),
    };
    if link_local {
        errs.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    if link_local_multicast {
        errs.push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
    }
    errs
}
