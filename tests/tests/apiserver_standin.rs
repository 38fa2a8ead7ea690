//! The API server stand-in, checked with what the agent uses against it: a
//! kube client built from the stand-in's kubeconfig, kube-runtime's
//! watcher and reflector (with default_backoff), and the events Recorder.
//! Each test gets its own network namespace and stand-in. Run as root.
use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Event as CoreEvent, Node, ObjectReference, Service, ServicePort, ServiceSpec},
        events::v1::Event as K8sEvent,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, PostParams, VersionMatch, WatchEvent, WatchParams},
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt, events, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tests::{apiserver_standin::ApiServerStandIn, netns::NetNs};

/// The selector a kube-proxy replacement watches Services with.
const SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
const PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";

/// Starts a stand-in in a fresh namespace and runs `test` there, on a
/// current-thread runtime, with a client made from its kubeconfig.
fn scenario(
    tag: &str,
    test: impl AsyncFnOnce(&ApiServerStandIn, Client) -> Result<()> + Send,
) -> Result<()> {
    let ns = NetNs::new(tag)?;
    let api = ApiServerStandIn::start(&ns)?;
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", ns.name()));
    api.write_kubeconfig(&kubeconfig)?;
    let result = ns.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = Client::try_from(config(&kubeconfig).await?)?;
            test(&api, client).await
        })
    });
    let _ = std::fs::remove_file(&kubeconfig);
    result
}

async fn config(kubeconfig: &Path) -> Result<Config> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

fn svc(namespace: &str, name: &str, labels: &[(&str, &str)], port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls `check` until it holds; fails after a few seconds (the watcher's
/// default backoff starts below one second).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A reflector over the selected Services, driven by a task.
fn reflect(client: Client) -> Store<Service> {
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(SELECTOR);
    let stream = reflector(writer, watcher(Api::<Service>::all(client), config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader
}

fn names(store: &Store<Service>) -> BTreeSet<String> {
    store
        .state()
        .iter()
        .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn port(store: &Store<Service>, ns: &str, name: &str) -> Option<i32> {
    let svc = store.get(&ObjectRef::new(name).within(ns))?;
    Some(svc.spec.as_ref()?.ports.as_ref()?.first()?.port)
}

/// The LISTs (not watches) of Services across namespaces: what the
/// watcher sends to (re)list.
fn service_lists(api: &ApiServerStandIn) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
        .count()
}

fn service_watches(api: &ApiServerStandIn) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=true"))
        .count()
}

/// The Status code of a failed call.
fn api_code<T: std::fmt::Debug>(result: kube::Result<T>) -> Result<u16> {
    match result {
        Err(kube::Error::Api(status)) => Ok(status.code),
        other => bail!("expected an API error, got {other:?}"),
    }
}

#[test]
fn lists_with_selectors_pages_and_errors() -> Result<()> {
    scenario("apisrv-list", async |api, client| {
        api.apply(&svc("default", "plain", &[], 80))?;
        api.apply(&svc("default", "other-proxy", &[(PROXY_NAME, "x")], 80))?;
        api.apply(&svc(
            "default",
            "headless",
            &[("service.kubernetes.io/headless", "")],
            80,
        ))?;
        api.apply(&svc("prod", "web", &[("app", "web")], 80))?;
        let mut node = Node::default();
        node.metadata.name = Some("node-1".into());
        api.apply(&node)?;

        let all: Api<Service> = Api::all(client.clone());
        let selected = all.list(&ListParams::default().labels(SELECTOR)).await?;
        let got: BTreeSet<_> = selected.iter().map(|s| s.name_any()).collect();
        ensure!(got == set(&["plain", "web"]), "selected {got:?}");
        let rv: u64 = selected
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or("")
            .parse()?;
        ensure!(rv >= 6, "list resourceVersion {rv}");
        for s in &selected {
            ensure!(s.metadata.uid.is_some() && s.metadata.creation_timestamp.is_some());
            ensure!(s.metadata.generation == Some(1));
        }

        // Namespace from the URL, name from a field selector.
        let default: Api<Service> = Api::namespaced(client.clone(), "default");
        ensure!(default.list(&ListParams::default()).await?.items.len() == 3);
        let by_name = all
            .list(&ListParams::default().fields("metadata.name=web"))
            .await?;
        ensure!(
            by_name.items.len() == 1 && by_name.items[0].namespace().as_deref() == Some("prod")
        );
        let not_web = all
            .list(&ListParams::default().fields("metadata.name!=web"))
            .await?;
        ensure!(not_web.items.len() == 3);
        ensure!(api_code(all.list(&ListParams::default().fields("spec.type=x")).await)? == 400);
        ensure!(api_code(all.list(&ListParams::default().labels("a in (")).await)? == 400);

        // Paging: every object once, in pages of at most two.
        let mut pages = 0;
        let mut seen = Vec::new();
        let mut params = ListParams::default().limit(2);
        loop {
            let page = all.list(&params).await?;
            ensure!(page.items.len() <= 2);
            pages += 1;
            seen.extend(page.items.iter().map(|s| s.name_any()));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        ensure!(pages == 2, "{pages} pages");
        ensure!(
            seen == ["headless", "other-proxy", "plain", "web"],
            "{seen:?}"
        );

        // Get, and the errors a client must be able to tell apart.
        ensure!(default.get("plain").await?.spec.is_some());
        ensure!(api_code(default.get("missing").await)? == 404);
        ensure!(
            api_code(
                all.create(&PostParams::default(), &svc("default", "x", &[], 1))
                    .await
            )? == 405
        );
        let nodes: Api<Node> = Api::all(client.clone());
        ensure!(nodes.get("node-1").await?.metadata.namespace.is_none());

        // An exact list at a compacted resourceVersion: HTTP 410.
        api.expire_watches();
        let exact = ListParams::default()
            .at(&rv.to_string())
            .matching(VersionMatch::Exact);
        ensure!(api_code(all.list(&exact).await)? == 410);

        // No token, no access.
        let kubeconfig = std::env::temp_dir().join(format!("anon-{}.kubeconfig", api.port()));
        api.write_kubeconfig(&kubeconfig)?;
        let mut anonymous = config(&kubeconfig).await?;
        std::fs::remove_file(&kubeconfig)?;
        anonymous.auth_info = AuthInfo::default();
        let anonymous: Api<Service> = Api::all(Client::try_from(anonymous)?);
        ensure!(api_code(anonymous.list(&ListParams::default()).await)? == 401);
        Ok(())
    })
}

#[test]
fn reflector_follows_changes_and_selector_moves() -> Result<()> {
    scenario("apisrv-watch", async |api, client| {
        api.apply(&svc("default", "a", &[], 80))?;
        api.apply(&svc("default", "skipped", &[(PROXY_NAME, "x")], 80))?;
        let store = reflect(client);
        eventually("the initial list", || names(&store) == set(&["default/a"])).await?;

        api.apply(&svc("prod", "b", &[], 80))?;
        eventually("a creation", || {
            names(&store) == set(&["default/a", "prod/b"])
        })
        .await?;
        api.apply(&svc("default", "a", &[], 8080))?;
        eventually("an update", || port(&store, "default", "a") == Some(8080)).await?;
        api.delete::<Service>(Some("prod"), "b")?;
        eventually("a deletion", || names(&store) == set(&["default/a"])).await?;

        // Leaving the selection looks like a deletion, entering it like a
        // creation.
        api.apply(&svc("default", "a", &[(PROXY_NAME, "other")], 8080))?;
        eventually("a leaving the selection", || names(&store).is_empty()).await?;
        api.apply(&svc("default", "skipped", &[], 81))?;
        eventually("skipped entering the selection", || {
            names(&store) == set(&["default/skipped"])
        })
        .await?;
        api.apply(&svc("default", "a", &[], 8080))?;
        eventually("a coming back", || {
            names(&store) == set(&["default/a", "default/skipped"])
        })
        .await?;

        // One list and one watch did all that.
        ensure!(service_lists(api) == 1, "{:?}", api.requests());
        ensure!(service_watches(api) == 1, "{:?}", api.requests());
        let watch = api
            .requests()
            .into_iter()
            .find(|r| r.contains("watch=true"));
        let watch = watch.unwrap_or_default();
        ensure!(watch.contains("allowWatchBookmarks=true"), "{watch}");
        ensure!(watch.contains("timeoutSeconds=290"), "{watch}");
        Ok(())
    })
}

#[test]
fn watcher_relists_after_410() -> Result<()> {
    scenario("apisrv-410", async |api, client| {
        api.apply(&svc("default", "a", &[], 80))?;
        api.apply(&svc("default", "b", &[], 80))?;
        let store = reflect(client.clone());
        eventually("the initial list", || {
            names(&store) == set(&["default/a", "default/b"])
        })
        .await?;

        let all: Api<Service> = Api::all(client.clone());
        let stale_rv = all
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version;
        let stale_rv = stale_rv.context("no resourceVersion")?;
        let lists = service_lists(api);
        api.expire_watches();
        api.apply(&svc("default", "late", &[], 80))?;
        eventually("a relist", || service_lists(api) > lists).await?;
        eventually("the store to be complete", || {
            names(&store) == set(&["default/a", "default/b", "default/late"])
        })
        .await?;

        // What the watcher was told when it re-watched: a 200 watch whose
        // one event is the 410 Status.
        let mut stale = all.watch(&WatchParams::default(), &stale_rv).await?.boxed();
        match stale.next().await {
            Some(Ok(WatchEvent::Error(status))) => {
                ensure!(
                    status.code == 410 && status.reason == "Expired",
                    "{status:?}"
                );
                ensure!(status.message.starts_with("too old resource version: "));
            }
            other => bail!("expected a 410 event, got {other:?}"),
        }
        ensure!(
            stale.next().await.is_none(),
            "the stream goes on after the 410"
        );

        // The watcher's own requests (those with its selector): list,
        // watch, re-watch from the same version after the stream ended
        // (answered by the 410), relist, watch from the new list.
        let watcher_requests: Vec<String> = api
            .requests()
            .iter()
            .filter(|r| r.contains("labelSelector="))
            .map(|r| match r.split_once("&resourceVersion=") {
                Some((_, rv)) if r.contains("watch=true") => format!("WATCH {rv}"),
                _ => "LIST".to_string(),
            })
            .collect();
        let relisted_rv = all
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version;
        let relisted_rv = relisted_rv.context("no resourceVersion")?;
        let expected = [
            "LIST".to_string(),
            format!("WATCH {stale_rv}"),
            format!("WATCH {stale_rv}"),
            "LIST".to_string(),
            format!("WATCH {relisted_rv}"),
        ];
        ensure!(watcher_requests == expected, "{watcher_requests:?}");

        // And it watches on from the relist.
        api.delete::<Service>(Some("default"), "a")?;
        eventually("a deletion after the relist", || {
            names(&store) == set(&["default/b", "default/late"])
        })
        .await?;
        Ok(())
    })
}

#[test]
fn watcher_reconnects_after_an_outage() -> Result<()> {
    scenario("apisrv-outage", async |api, client| {
        api.apply(&svc("default", "a", &[], 80))?;
        let store = reflect(client.clone());
        eventually("the initial list", || names(&store) == set(&["default/a"])).await?;

        api.stop();
        let all: Api<Service> = Api::all(client.clone());
        ensure!(
            all.list(&ListParams::default()).await.is_err(),
            "served while stopped"
        );
        api.apply(&svc("default", "during", &[], 80))?;
        api.delete::<Service>(Some("default"), "a")?;
        // Long enough for the watcher to fail to reconnect at least once.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let watches = service_watches(api);
        ensure!(names(&store) == set(&["default/a"]));

        api.resume()?;
        eventually("the store to converge", || {
            names(&store) == set(&["default/during"])
        })
        .await?;
        ensure!(service_watches(api) > watches, "{:?}", api.requests());
        ensure!(all.list(&ListParams::default()).await?.items.len() == 1);
        Ok(())
    })
}

#[test]
fn recorder_creates_then_patches_a_series() -> Result<()> {
    scenario("apisrv-events", async |api, client| {
        let recorder = events::Recorder::new(
            client.clone(),
            events::Reporter {
                controller: "svc-agent".into(),
                instance: Some("node-1".into()),
            },
        );
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some("default".into()),
            name: Some("web".into()),
            ..Default::default()
        };
        let event = events::Event {
            type_: events::EventType::Warning,
            reason: "NoEndpoints".into(),
            note: Some("no ready endpoints".into()),
            action: "Program".into(),
            secondary: None,
        };

        recorder.publish(&event, &reference).await?;
        let created = api.events();
        ensure!(created.len() == 1, "{created:?}");
        ensure!(created[0]["series"].is_null());
        ensure!(created[0]["regarding"]["name"] == "web");
        ensure!(created[0]["reason"] == "NoEndpoints");
        ensure!(created[0]["reportingController"] == "svc-agent");

        recorder.publish(&event, &reference).await?;
        let patched = api.events();
        ensure!(patched.len() == 1, "{patched:?}");
        ensure!(patched[0]["series"]["count"] == 2, "{patched:?}");
        ensure!(patched[0]["metadata"]["uid"] == created[0]["metadata"]["uid"]);
        ensure!(patched[0]["note"] == "no ready endpoints");

        let name = patched[0]["metadata"]["name"].as_str().unwrap_or_default();
        let writes: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| !r.starts_with("GET"))
            .collect();
        ensure!(
            writes[0].starts_with("POST /apis/events.k8s.io/v1/namespaces/default/events")
                && writes[1].starts_with(&format!(
                    "PATCH /apis/events.k8s.io/v1/namespaces/default/events/{name}"
                )),
            "{writes:?}"
        );

        // Read back through the typed API.
        let listed = Api::<K8sEvent>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await?;
        ensure!(listed.items.len() == 1);
        ensure!(listed.items[0].series.as_ref().map(|s| s.count) == Some(2));

        // core/v1 Events are accepted too.
        let legacy = CoreEvent {
            metadata: ObjectMeta {
                name: Some("legacy".into()),
                ..Default::default()
            },
            involved_object: reference.clone(),
            reason: Some("Legacy".into()),
            ..Default::default()
        };
        Api::<CoreEvent>::namespaced(client, "default")
            .create(&PostParams::default(), &legacy)
            .await?;
        let all = api.events();
        ensure!(all.len() == 2 && all[1]["kind"] == "Event" && all[1]["apiVersion"] == "v1");
        Ok(())
    })
}

#[test]
fn raw_watch_bookmarks_timeout_and_streaming_lists() -> Result<()> {
    scenario("apisrv-raw", async |api, client| {
        api.set_bookmark_interval(Duration::from_millis(200));
        let created = api.apply(&svc("default", "a", &[], 80))?;
        let rv = created
            .metadata
            .resource_version
            .context("no resourceVersion")?;
        let all: Api<Service> = Api::all(client.clone());

        // From a resourceVersion: later changes only, then bookmarks at
        // the current version; timeoutSeconds ends the stream cleanly.
        let params = WatchParams::default().timeout(1);
        let started = Instant::now();
        let mut stream = all.watch(&params, &rv).await?.boxed();
        let modified = api.apply(&svc("default", "a", &[], 81))?;
        let modified_rv = modified
            .metadata
            .resource_version
            .context("no resourceVersion")?;
        match stream.next().await {
            Some(Ok(WatchEvent::Modified(s))) => {
                ensure!(s.metadata.resource_version.as_deref() == Some(modified_rv.as_str()));
            }
            other => bail!("expected MODIFIED, got {other:?}"),
        }
        match stream.next().await {
            Some(Ok(WatchEvent::Bookmark(b))) => {
                ensure!(
                    b.metadata.resource_version == modified_rv,
                    "{}",
                    b.metadata.resource_version
                );
                ensure!(b.types.kind == "Service" && b.types.api_version == "v1");
            }
            other => bail!("expected BOOKMARK, got {other:?}"),
        }
        while let Some(event) = stream.next().await {
            ensure!(matches!(event, Ok(WatchEvent::Bookmark(_))), "{event:?}");
        }
        let took = started.elapsed();
        ensure!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // "0": the current objects as ADDED first.
        let mut from_zero = all
            .watch(&WatchParams::default().timeout(1), "0")
            .await?
            .boxed();
        match from_zero.next().await {
            Some(Ok(WatchEvent::Added(s))) => ensure!(s.name_any() == "a"),
            other => bail!("expected ADDED, got {other:?}"),
        }

        // kube-runtime's streaming lists (sendInitialEvents) work too.
        let (reader, writer) = reflector::store::<Service>();
        let config = watcher::Config::default().streaming_lists();
        let stream = reflector(writer, watcher(all, config)).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while stream.next().await.is_some() {}
        });
        eventually("a streaming list", || names(&reader) == set(&["default/a"])).await?;
        api.apply(&svc("default", "b", &[], 80))?;
        eventually("a change after it", || names(&reader).len() == 2).await?;
        ensure!(service_lists(api) == 0, "{:?}", api.requests());
        Ok(())
    })
}
