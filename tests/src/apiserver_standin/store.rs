//! The objects, one resourceVersion counter for every kind and the log of
//! changes: etcd in miniature. Objects are kept as the JSON clients see.
//!
//! resourceVersions: the counter starts at 1 and every write takes the
//! next one. The log holds every change since `oldest`; a list or watch
//! asking for an older resourceVersion gets 410 Expired, as after an etcd
//! compaction.
use std::collections::BTreeMap;

use k8s_openapi::{Resource, jiff::Timestamp};
use serde_json::{Map, Value, json};

use super::{patch, status::ApiError};

/// A served kind, from its k8s-openapi type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ResourceType {
    pub api_version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn of<K: Resource>() -> Self {
        Self {
            api_version: K::API_VERSION,
            plural: K::URL_PATH_SEGMENT,
            kind: K::KIND,
            // The scope is a marker type; its name is readable without
            // putting a 'static bound on every caller.
            namespaced: std::any::type_name::<K::Scope>().ends_with("::NamespaceResourceScope"),
        }
    }
}

/// (namespace, name); the namespace is "" for cluster-scoped objects.
/// Ordered like etcd keys, which is the order lists come in.
pub(crate) type ObjKey = (String, String);

/// One write. A watcher turns it into ADDED, MODIFIED or DELETED depending
/// on whether it saw `prev` and sees `cur` through its selectors.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub rt: ResourceType,
    pub key: ObjKey,
    /// None for a creation.
    pub prev: Option<Value>,
    /// None for a deletion.
    pub cur: Option<Value>,
}

#[derive(Debug)]
pub(crate) struct Store {
    types: Vec<ResourceType>,
    rv: u64,
    /// The oldest resourceVersion still served from the log.
    oldest: u64,
    objects: BTreeMap<ResourceType, BTreeMap<ObjKey, Value>>,
    log: Vec<Change>,
    /// Bumped to end every open watch stream.
    epoch: u64,
}

impl Store {
    pub fn new(types: impl IntoIterator<Item = ResourceType>) -> Self {
        Self {
            types: types.into_iter().collect(),
            rv: 1,
            oldest: 1,
            objects: BTreeMap::new(),
            log: Vec::new(),
            epoch: 0,
        }
    }

    pub fn register(&mut self, rt: ResourceType) {
        if !self.types.contains(&rt) {
            self.types.push(rt);
        }
    }

    pub fn resource_type(&self, api_version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .copied()
            .find(|t| t.api_version == api_version && t.plural == plural)
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn get(&self, rt: ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&rt)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The objects of a kind as they were at resourceVersion `at` (now if
    /// None), and the resourceVersion they are at.
    pub fn snapshot(
        &self,
        rt: ResourceType,
        at: Option<u64>,
    ) -> Result<(u64, BTreeMap<ObjKey, Value>), ApiError> {
        let mut objects = self.objects.get(&rt).cloned().unwrap_or_default();
        let Some(at) = at.filter(|at| *at < self.rv) else {
            return Ok((self.rv, objects));
        };
        self.check_retained(at)?;
        // Undo the later changes, newest first.
        for change in self.log.iter().rev().take_while(|c| c.rv > at) {
            if change.rt != rt {
                continue;
            }
            match &change.prev {
                Some(prev) => objects.insert(change.key.clone(), prev.clone()),
                None => objects.remove(&change.key),
            };
        }
        Ok((at, objects))
    }

    /// One page of a list: the objects of a kind as they were at `at` (now
    /// if `None`), in key order after `after`, that `keep` accepts, at
    /// most `limit` of them; and, if more follow, the last key served. Copies only the
    /// page (a paged list of N objects must not cost N copies per page).
    pub fn list_page(
        &self,
        rt: ResourceType,
        at: Option<u64>,
        after: Option<&ObjKey>,
        limit: Option<u64>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<(u64, Vec<Value>, Option<ObjKey>), ApiError> {
        let empty = BTreeMap::new();
        let objects = self.objects.get(&rt).unwrap_or(&empty);
        // What the changes since `at` replaced: key -> its value at `at`
        // (None: it did not exist then). The oldest change wins.
        let mut then: BTreeMap<&ObjKey, Option<&Value>> = BTreeMap::new();
        let at = match at.filter(|at| *at < self.rv) {
            Some(at) => {
                self.check_retained(at)?;
                for change in self.log.iter().rev().take_while(|c| c.rv > at) {
                    if change.rt == rt {
                        then.insert(&change.key, change.prev.as_ref());
                    }
                }
                at
            }
            None => self.rv,
        };
        let lower = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        // Keys of either side, merged in order.
        let mut now_keys = objects
            .range::<ObjKey, _>((lower, std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .peekable();
        let mut then_keys = then
            .keys()
            .copied()
            .filter(|k| after.is_none_or(|a| *k > a))
            .peekable();
        let mut items = Vec::new();
        let mut last: Option<&ObjKey> = None;
        loop {
            let key = match (now_keys.peek(), then_keys.peek()) {
                (None, None) => return Ok((at, items, None)),
                (Some(a), Some(b)) if a == b => {
                    then_keys.next();
                    now_keys.next().unwrap()
                }
                (Some(a), Some(b)) if a < b => now_keys.next().unwrap(),
                (Some(_), None) => now_keys.next().unwrap(),
                _ => then_keys.next().unwrap(),
            };
            let value = match then.get(key) {
                Some(old) => *old,
                None => objects.get(key),
            };
            let Some(value) = value.filter(|v| keep(v)) else {
                continue;
            };
            if limit.is_some_and(|l| items.len() as u64 >= l) {
                // A full page, and at least one more item: the next page
                // starts after the last one served.
                return Ok((at, items, last.cloned()));
            }
            items.push(value.clone());
            last = Some(key);
        }
    }

    /// Every change (of any kind) after resourceVersion `after`.
    pub fn changes_after(&self, after: u64) -> Result<&[Change], ApiError> {
        self.check_retained(after)?;
        let first = self.log.partition_point(|c| c.rv <= after);
        Ok(&self.log[first..])
    }

    fn check_retained(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.oldest {
            // The real API server's wording; the number is the newest
            // resourceVersion that is already gone.
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.oldest - 1
            )));
        }
        Ok(())
    }

    /// Compacts the history (every resourceVersion so far becomes too old)
    /// and ends the open watches. The counter moves on first, as it always
    /// has on a real cluster (other writes), so a client that relists gets
    /// a resourceVersion it can watch from.
    pub fn expire(&mut self) {
        self.rv += 1;
        self.oldest = self.rv;
        self.log.clear();
        self.end_watches();
    }

    pub fn end_watches(&mut self) {
        self.epoch += 1;
    }

    pub fn create(
        &mut self,
        rt: ResourceType,
        url_ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        self.generate_name(&mut obj);
        let (key, mut obj) = prepare(rt, url_ns, None, obj)?;
        if self.objects.get(&rt).is_some_and(|m| m.contains_key(&key)) {
            return Err(ApiError::already_exists(rt.plural, &key.1));
        }
        let rv = self.rv + 1;
        let meta = &mut obj["metadata"];
        // uids are minted from the creation resourceVersion: unique, and
        // sorting by them gives creation order.
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012x}"));
        meta["creationTimestamp"] =
            json!(Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        meta["generation"] = json!(1);
        Ok(self.commit(rt, key, None, Some(obj)))
    }

    /// `generateName`: the server picks the name's suffix.
    /// (Client input: checked access only, as IndexMut panics on non-objects.)
    fn generate_name(&self, obj: &mut Value) {
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let unnamed = meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        let prefix = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if unnamed && !prefix.is_empty() {
            let name = format!("{prefix}{:05x}", self.rv + 1);
            meta.insert("name".into(), json!(name));
        }
    }

    /// Replaces an existing object. With `precondition`, a resourceVersion
    /// in `obj` must be the stored one (optimistic concurrency, as for PUT).
    pub fn update(
        &mut self,
        rt: ResourceType,
        url_ns: Option<&str>,
        url_name: Option<&str>,
        obj: Value,
        precondition: bool,
    ) -> Result<Value, ApiError> {
        let (key, mut obj) = prepare(rt, url_ns, url_name, obj)?;
        let Some(old) = self.objects.get(&rt).and_then(|m| m.get(&key)).cloned() else {
            return Err(ApiError::not_found(rt.plural, &key.1));
        };
        let old_rv = &old["metadata"]["resourceVersion"];
        let given_rv = &obj["metadata"]["resourceVersion"];
        if precondition && given_rv.as_str().is_some_and(|v| !v.is_empty()) && given_rv != old_rv {
            return Err(ApiError::conflict(rt.plural, &key.1));
        }
        // Fields the server owns.
        for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            obj["metadata"][field] = old["metadata"][field].clone();
        }
        if obj == old {
            // Nothing changed: like a real server, no write, no event.
            return Ok(old);
        }
        if spec_of(&obj) != spec_of(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        Ok(self.commit(rt, key, Some(old), Some(obj)))
    }

    /// Create or replace, whatever resourceVersion `obj` carries (the test
    /// side's `apply`).
    pub fn upsert(&mut self, rt: ResourceType, obj: Value) -> Result<Value, ApiError> {
        let (key, obj) = prepare(rt, None, None, obj)?;
        if self.get(rt, &key.0, &key.1).is_some() {
            self.update(rt, None, None, obj, false)
        } else {
            self.create(rt, None, obj)
        }
    }

    /// Applies a JSON merge patch. A resourceVersion in the patch is a
    /// precondition, as on a real server.
    pub fn merge_patch(
        &mut self,
        rt: ResourceType,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.get(rt, namespace, name) else {
            return Err(ApiError::not_found(rt.plural, name));
        };
        let wanted_rv = &patch["metadata"]["resourceVersion"];
        if wanted_rv.is_string() && *wanted_rv != old["metadata"]["resourceVersion"] {
            return Err(ApiError::conflict(rt.plural, name));
        }
        let mut obj = old.clone();
        patch::merge(&mut obj, patch);
        let url_ns = rt.namespaced.then_some(namespace);
        self.update(rt, url_ns, Some(name), obj, false)
    }

    /// Removes an object; returns it as last seen, at the deletion's
    /// resourceVersion (what a watcher's DELETED event carries).
    pub fn delete(
        &mut self,
        rt: ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = self.objects.get(&rt).and_then(|m| m.get(&key)).cloned() else {
            return Err(ApiError::not_found(rt.plural, name));
        };
        let mut gone = self.commit(rt, key, Some(old), None);
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        Ok(gone)
    }

    /// Records a write at the next resourceVersion; returns the object as
    /// stored (or as it was, for a deletion).
    fn commit(
        &mut self,
        rt: ResourceType,
        key: ObjKey,
        prev: Option<Value>,
        mut cur: Option<Value>,
    ) -> Value {
        self.rv += 1;
        let objects = self.objects.entry(rt).or_default();
        match &mut cur {
            Some(obj) => {
                obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                objects.insert(key.clone(), obj.clone());
            }
            None => {
                objects.remove(&key);
            }
        }
        let result = cur.clone().or_else(|| prev.clone()).unwrap_or_default();
        self.log.push(Change {
            rv: self.rv,
            rt,
            key,
            prev,
            cur,
        });
        result
    }
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(obj: &Value) -> Map<String, Value> {
    let mut rest = obj.as_object().cloned().unwrap_or_default();
    rest.remove("metadata");
    rest.remove("status");
    rest
}

/// Checks a client's object against its kind and the URL it was sent to
/// and fills in apiVersion, kind and namespace; returns its key.
fn prepare(
    rt: ResourceType,
    url_ns: Option<&str>,
    url_name: Option<&str>,
    mut obj: Value,
) -> Result<(ObjKey, Value), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    for (field, expected) in [("apiVersion", rt.api_version), ("kind", rt.kind)] {
        match obj[field].as_str() {
            None | Some("") => obj[field] = json!(expected),
            Some(got) if got == expected => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} of the object ({got}) does not match the expected {field} ({expected})"
                )));
            }
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    let name = match (meta["name"].as_str().filter(|n| !n.is_empty()), url_name) {
        (Some(body), Some(url)) if body != url => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body}) does not match the name on the URL ({url})"
            )));
        }
        (Some(name), _) | (None, Some(name)) => name.to_string(),
        (None, None) => {
            return Err(ApiError::invalid(
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    meta["name"] = json!(name);
    let namespace = if rt.namespaced {
        let ns = match (meta["namespace"].as_str().filter(|n| !n.is_empty()), url_ns) {
            (Some(body), Some(url)) if body != url => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(ns), _) | (None, Some(ns)) => ns.to_string(),
            (None, None) => "default".to_string(),
        };
        meta["namespace"] = json!(ns);
        ns
    } else {
        if let Some(meta) = meta.as_object_mut() {
            meta.remove("namespace");
        }
        String::new()
    };
    Ok(((namespace, name), obj))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Service};

    use super::*;

    fn svc() -> ResourceType {
        ResourceType::of::<Service>()
    }

    fn obj(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}, "spec": {"ports": []}})
    }

    fn rv(v: &Value) -> u64 {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn scope_comes_from_the_type() {
        assert!(svc().namespaced);
        assert!(!ResourceType::of::<Node>().namespaced);
        assert_eq!(svc().plural, "services");
    }

    #[test]
    fn writes_stamp_and_version() {
        let mut s = Store::new([svc()]);
        let a = s.create(svc(), Some("ns"), obj("a", json!({}))).unwrap();
        assert_eq!(a["kind"], "Service");
        assert_eq!(a["apiVersion"], "v1");
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(rv(&a), 2);
        assert!(a["metadata"]["uid"].is_string());
        assert_eq!(
            s.create(svc(), Some("ns"), obj("a", json!({})))
                .unwrap_err()
                .code,
            409
        );

        // Same content: no write.
        let same = s.upsert(svc(), obj("a", json!({}))).unwrap();
        assert_eq!(rv(&same), 2);
        // Labels only: new resourceVersion, same generation.
        let b = s.upsert(svc(), obj("a", json!({"x": "1"}))).unwrap();
        assert_eq!((rv(&b), b["metadata"]["generation"].clone()), (3, json!(1)));
        assert_eq!(b["metadata"]["uid"], a["metadata"]["uid"]);
        // Spec: generation too.
        let mut c = obj("a", json!({"x": "1"}));
        c["spec"]["type"] = json!("NodePort");
        let c = s.upsert(svc(), c).unwrap();
        assert_eq!((rv(&c), c["metadata"]["generation"].clone()), (4, json!(2)));

        let mut stale = c.clone();
        stale["metadata"]["resourceVersion"] = json!("3");
        assert_eq!(
            s.update(svc(), Some("ns"), Some("a"), stale, true)
                .unwrap_err()
                .code,
            409
        );
        let gone = s.delete(svc(), "ns", "a").unwrap();
        assert_eq!(rv(&gone), 5);
        assert!(s.get(svc(), "ns", "a").is_none());
        assert_eq!(s.delete(svc(), "ns", "a").unwrap_err().code, 404);
    }

    #[test]
    fn rejects_mismatches() {
        let mut s = Store::new([svc()]);
        let mut wrong_kind = obj("a", json!({}));
        wrong_kind["kind"] = json!("Node");
        assert_eq!(
            s.create(svc(), Some("ns"), wrong_kind).unwrap_err().code,
            400
        );
        assert_eq!(
            s.create(svc(), Some("other"), obj("a", json!({})))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            s.create(svc(), Some("ns"), json!({"metadata": {}}))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            s.create(svc(), Some("ns"), json!([1])).unwrap_err().code,
            400
        );
        assert_eq!(
            s.create(svc(), Some("ns"), json!({"metadata": 1}))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            s.create(svc(), Some("ns"), json!({"metadata": {"name": 1}}))
                .unwrap_err()
                .code,
            422
        );
        let named = s
            .create(
                svc(),
                Some("ns"),
                json!({"metadata": {"generateName": "gen-"}}),
            )
            .unwrap();
        assert!(
            named["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("gen-")
        );
    }

    #[test]
    fn merge_patch_keeps_identity() {
        let mut s = Store::new([svc()]);
        s.create(svc(), Some("ns"), obj("a", json!({"x": "1"})))
            .unwrap();
        let p = s
            .merge_patch(
                svc(),
                "ns",
                "a",
                &json!({"metadata": {"labels": {"x": null, "y": "2"}}}),
            )
            .unwrap();
        assert_eq!(p["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(p["metadata"]["name"], "a");
        let rename = json!({"metadata": {"name": "b"}});
        assert_eq!(
            s.merge_patch(svc(), "ns", "a", &rename).unwrap_err().code,
            400
        );
        // A patch may turn metadata into anything; the name stays the URL's.
        let odd = s
            .merge_patch(svc(), "ns", "a", &json!({"metadata": "x"}))
            .unwrap();
        assert_eq!(odd["metadata"]["name"], "a");
        let stale = json!({"metadata": {"resourceVersion": "1"}});
        assert_eq!(
            s.merge_patch(svc(), "ns", "a", &stale).unwrap_err().code,
            409
        );
    }

    #[test]
    fn snapshots_and_compaction() {
        let mut s = Store::new([svc()]);
        s.create(svc(), Some("ns"), obj("a", json!({}))).unwrap(); // rv 2
        s.create(svc(), Some("ns"), obj("b", json!({}))).unwrap(); // rv 3
        s.upsert(svc(), obj("a", json!({"x": "1"}))).unwrap(); // rv 4
        s.delete(svc(), "ns", "b").unwrap(); // rv 5

        let (at, objs) = s.snapshot(svc(), Some(3)).unwrap();
        assert_eq!(at, 3);
        assert_eq!(objs.len(), 2);
        assert_eq!(
            objs[&("ns".into(), "a".into())]["metadata"]["labels"],
            json!({})
        );
        let (at, objs) = s.snapshot(svc(), None).unwrap();
        assert_eq!((at, objs.len()), (5, 1));
        assert_eq!(s.changes_after(3).unwrap().len(), 2);

        let epoch = s.epoch();
        s.expire();
        assert_ne!(s.epoch(), epoch);
        assert_eq!(s.snapshot(svc(), Some(5)).unwrap_err().code, 410);
        let err = s.changes_after(5).unwrap_err();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        assert_eq!(err.message, "too old resource version: 5 (5)");
        // What a relist returns can be watched from.
        let (now, _) = s.snapshot(svc(), None).unwrap();
        assert!(s.changes_after(now).unwrap().is_empty());
    }

    #[test]
    fn list_pages_merge_the_past_and_the_present() {
        let mut s = Store::new([svc()]);
        for name in ["a", "b", "c", "d"] {
            s.create(svc(), Some("ns"), obj(name, json!({}))).unwrap(); // rv 2..=5
        }
        s.delete(svc(), "ns", "b").unwrap(); // rv 6
        s.create(svc(), Some("ns"), obj("bb", json!({}))).unwrap(); // rv 7
        let names = |items: &[Value]| -> Vec<String> {
            items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        // Now, two at a time.
        let (rv, page, last) = s.list_page(svc(), None, None, Some(2), |_| true).unwrap();
        assert_eq!((rv, names(&page)), (7, vec!["a".into(), "bb".into()]));
        let (_, page, last) = s
            .list_page(svc(), None, last.as_ref(), Some(2), |_| true)
            .unwrap();
        assert_eq!((names(&page), last), (vec!["c".into(), "d".into()], None));
        // As at rv 5: b is back, bb not there yet.
        let (rv, page, last) = s
            .list_page(svc(), Some(5), None, Some(3), |_| true)
            .unwrap();
        assert_eq!(
            (rv, names(&page)),
            (5, vec!["a".into(), "b".into(), "c".into()])
        );
        let (_, page, _) = s
            .list_page(svc(), Some(5), last.as_ref(), None, |_| true)
            .unwrap();
        assert_eq!(names(&page), vec!["d".to_string()]);
        // A filter.
        let (_, page, _) = s
            .list_page(svc(), None, None, None, |o| o["metadata"]["name"] != "c")
            .unwrap();
        assert_eq!(names(&page), vec!["a", "bb", "d"]);
    }
}
