//! The REST layer: authentication, routing, query parameters, and the
//! get/list/watch/create/update/patch/delete handlers.
use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONTENT_TYPE},
};
use serde_json::{Value, json};

use super::{
    Shared,
    selector::{FieldSelector, Filter},
    status::ApiError,
    store::{ObjKey, ResourceType, Store},
    watch::{self, Since, WatchParams},
};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The real API server's default limit on request bodies.
const MAX_BODY: usize = 3 << 20;

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let line = match req.uri().query() {
        Some(q) => format!("{} {}?{q}", req.method(), req.uri().path()),
        None => format!("{} {}", req.method(), req.uri().path()),
    };
    shared.log_request(line);
    serve(shared, req)
        .await
        .unwrap_or_else(|e| json_response(e.code, &e.to_json()))
}

async fn serve(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bearer = format!("Bearer {}", shared.token);
    if req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&bearer)
    {
        return Err(ApiError::unauthorized());
    }
    if req.uri().path() == "/version" && req.method() == Method::GET {
        return Ok(json_response(200, &version()));
    }
    let route = shared
        .read(|s| route(s, req.uri().path()))
        .ok_or_else(ApiError::no_route)?;
    let query = Query::parse(req.uri().query());
    match (req.method().clone(), route.name.clone()) {
        (Method::GET, name) if query.flag("watch")? => start_watch(shared, &route, name, &query),
        (Method::GET, None) => list(&shared, &route, &query),
        (Method::GET, Some(name)) => {
            let obj = shared.read(|s| s.get(route.rt, route.ns(), &name).cloned());
            let obj = obj.ok_or_else(|| ApiError::not_found(route.rt.plural, &name))?;
            Ok(json_response(200, &obj))
        }
        // A create names its namespace in the URL (or the kind has none).
        (Method::POST, None) if route.namespace.is_some() || !route.rt.namespaced => {
            let obj = read_json(req).await?;
            let ns = route.namespace.as_deref();
            let created = shared.write(|s| s.create(route.rt, ns, obj))?;
            Ok(json_response(201, &created))
        }
        (Method::PUT, Some(name)) => {
            let obj = read_json(req).await?;
            let ns = route.namespace.as_deref();
            let updated = shared.write(|s| s.update(route.rt, ns, Some(&name), obj, true))?;
            Ok(json_response(200, &updated))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            // Strategic merge, server-side apply and JSON patch are refused
            // rather than approximated, so nothing comes to rely on
            // semantics a real server would not have.
            if content_type.split(';').next() != Some("application/merge-patch+json") {
                return Err(ApiError::unsupported_media_type(&content_type));
            }
            let patch = read_json(req).await?;
            let ns = route.ns().to_string();
            let patched = shared.write(|s| s.merge_patch(route.rt, &ns, &name, &patch))?;
            Ok(json_response(200, &patched))
        }
        (Method::DELETE, Some(name)) => {
            let gone = shared.write(|s| s.delete(route.rt, route.ns(), &name))?;
            Ok(json_response(200, &gone))
        }
        (method, _) => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// A request's target: a collection (all namespaces or one) or an object.
#[derive(Debug, Clone)]
struct Route {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
}

impl Route {
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
}

/// `/api/v1[/namespaces/{ns}]/{plural}[/{name}]` and
/// `/apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}]`.
fn route(store: &Store, path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let rt = store.resource_type(&api_version, plural)?;
    // Namespaced objects live only under namespaces/ (their collection
    // across all namespaces excepted), cluster-scoped ones never.
    if (namespace.is_some() || name.is_some()) && namespace.is_some() != rt.namespaced {
        return None;
    }
    Some(Route {
        rt,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

/// Decoded query parameters; the last of repeated ones wins.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
        Self(pairs.into_owned().collect())
    }

    /// Present and not empty.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Go's strconv.ParseBool, as the API server reads flags.
    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(ApiError::bad_request(format!("{key}: invalid value {v:?}"))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("{key}: invalid value {v:?}")))
            })
            .transpose()
    }

    /// labelSelector and fieldSelector, plus what the URL pins.
    fn filter(&self, route: &Route, name: Option<&str>) -> Result<Filter, ApiError> {
        let mut filter = Filter::parse(self.get("labelSelector"), self.get("fieldSelector"))
            .map_err(ApiError::bad_request)?;
        if let Some(ns) = &route.namespace {
            filter.fields = filter
                .fields
                .and(FieldSelector::pinned("metadata.namespace", ns));
        }
        if let Some(name) = name {
            filter.fields = filter
                .fields
                .and(FieldSelector::pinned("metadata.name", name));
        }
        Ok(filter)
    }
}

/// A list's continue token: the snapshot's resourceVersion and the last
/// key served, so later pages come from the same snapshot.
fn encode_continue(rv: u64, (ns, name): &ObjKey) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{ns}/{name}")});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    let invalid = || ApiError::bad_request("continue key is not valid");
    let json = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let token: Value = serde_json::from_slice(&json).map_err(|_| invalid())?;
    let rv = token["rv"].as_u64().ok_or_else(invalid)?;
    let (ns, name) = token["start"]
        .as_str()
        .and_then(|s| s.split_once('/'))
        .ok_or_else(invalid)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

fn list(shared: &Shared, route: &Route, query: &Query) -> Result<Response<Body>, ApiError> {
    let filter = query.filter(route, None)?;
    let limit = query.number("limit")?.filter(|l| *l > 0);
    let continued = query.get("continue").map(decode_continue).transpose()?;
    // Which state to list: a continued list stays on its first page's
    // snapshot; Exact asks for a past one; anything else gets the latest
    // (never older than what was asked).
    let at = match (&continued, query.get("resourceVersionMatch")) {
        (Some((rv, _)), _) => Some(*rv),
        (None, Some("Exact")) => Some(query.number("resourceVersion")?.ok_or_else(|| {
            ApiError::bad_request("resourceVersionMatch: Exact needs a resourceVersion")
        })?),
        (None, None | Some("NotOlderThan")) => None,
        (None, Some(other)) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: unsupported value {other:?}"
            )));
        }
    };
    let start = continued.as_ref().map(|(_, key)| key);
    let (rv, items, last) = shared
        .read(|s| s.list_page(route.rt, at, start, limit, |obj| filter.matches(obj)))
        .map_err(|e| {
            if continued.is_some() {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            } else {
                e
            }
        })?;
    let next = last.map(|key| encode_continue(rv, &key));
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    let list = json!({
        "apiVersion": route.rt.api_version,
        "kind": format!("{}List", route.rt.kind),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(200, &list))
}

fn start_watch(
    shared: Arc<Shared>,
    route: &Route,
    name: Option<String>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let since = match query.number("resourceVersion")? {
        None | Some(0) => Since::Now,
        Some(rv) => Since::After(rv),
    };
    let params = WatchParams {
        rt: route.rt,
        filter: query.filter(route, name.as_deref())?,
        since,
        bookmarks: query.flag("allowWatchBookmarks")?,
        initial_events: query.flag("sendInitialEvents")?,
        // 0 means "the server's default", which is to run until closed.
        timeout: query
            .number("timeoutSeconds")?
            .filter(|t| *t > 0)
            .map(Duration::from_secs),
    };
    let body = watch::start(shared, params);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(body.boxed())
        .unwrap_or_default())
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large()
            } else {
                ApiError::bad_request(format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("decoding the body: {e}")))
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_default()
}

/// GET /version, for clients that check what they talk to.
fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": "v1.35.0-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

    use super::*;

    fn routed(path: &str) -> Option<(&'static str, Option<String>, Option<String>)> {
        let store = Store::new([
            ResourceType::of::<Service>(),
            ResourceType::of::<Node>(),
            ResourceType::of::<EndpointSlice>(),
        ]);
        route(&store, path).map(|r| (r.rt.kind, r.namespace, r.name))
    }

    #[test]
    fn routes() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(routed("/api/v1/services"), Some(("Service", None, None)));
        assert_eq!(
            routed("/api/v1/namespaces/ns/services/web"),
            Some(("Service", s("ns"), s("web")))
        );
        assert_eq!(
            routed("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"),
            Some(("EndpointSlice", s("ns"), None))
        );
        assert_eq!(routed("/api/v1/nodes/n1"), Some(("Node", None, s("n1"))));
        for bad in [
            "/api/v1/services/web",
            "/api/v1/namespaces/ns/nodes",
            "/api/v1/namespaces//services",
            "/api/v1/pods",
            "/apis/discovery.k8s.io/v2/endpointslices",
            "/api/v1/namespaces/ns/services/web/status",
            "/healthz",
        ] {
            assert_eq!(routed(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "&watch=true&labelSelector=%21a%2Cb%3Dc&limit=5&x=maybe",
        ));
        assert!(q.flag("watch").unwrap());
        assert!(!q.flag("allowWatchBookmarks").unwrap());
        assert_eq!(q.get("labelSelector"), Some("!a,b=c"));
        assert_eq!(q.number("limit").unwrap(), Some(5));
        assert_eq!(q.flag("x").unwrap_err().code, 400);
        assert_eq!(q.number("labelSelector").unwrap_err().code, 400);
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("ns".to_string(), "web".to_string());
        assert_eq!(
            decode_continue(&encode_continue(7, &key)).unwrap(),
            (7, key)
        );
        assert_eq!(decode_continue("not a token").unwrap_err().code, 400);
    }
}
