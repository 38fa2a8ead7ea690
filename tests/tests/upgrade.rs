//! An agent of another version left pinned maps behind: the ones whose
//! layout this version changed are recreated, the others adopted with
//! their content, and the load never fails on them.
use std::process::Command;

use aya::maps::MapInfo;
use svc_agent::dataplane::{Dataplane, Pins};
use tests::{bpffs::Bpffs, netns::sh};

fn map_id(pins: &Pins, name: &str) -> u32 {
    MapInfo::from_pin(pins.maps_dir().join(name)).unwrap().id()
}

#[test]
fn pinned_maps_of_another_layout_are_recreated_and_the_rest_adopted() {
    let fs = Bpffs::new("upgrade").unwrap();
    let pins = fs.pins("svc-agent");
    drop(Dataplane::load_pinned(&pins, Default::default()).unwrap());
    let services = map_id(&pins, svc_common::SERVICES_MAP);
    let conntrack = map_id(&pins, svc_common::CONNTRACK_MAP);

    // The same version again: everything adopted.
    drop(Dataplane::load_pinned(&pins, Default::default()).unwrap());
    assert_eq!(map_id(&pins, svc_common::CONNTRACK_MAP), conntrack);

    // An older CONNTRACK: same name, a value of another size.
    let path = pins.maps_dir().join(svc_common::CONNTRACK_MAP);
    std::fs::remove_file(&path).unwrap();
    sh(Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type",
            "lru_hash",
            "key",
            "40",
            "value",
            "32",
            "entries",
            "1024",
            "name",
            "CONNTRACK",
        ]))
    .expect("bpftool map create");
    let old = map_id(&pins, svc_common::CONNTRACK_MAP);
    drop(
        Dataplane::load_pinned(&pins, Default::default())
            .expect("an old pin must not stop the agent"),
    );
    let info = MapInfo::from_pin(&path).unwrap();
    assert_ne!(info.id(), old, "the incompatible map was replaced");
    assert_eq!(
        info.value_size() as usize,
        size_of::<svc_common::NatEntry>()
    );
    assert_eq!(
        map_id(&pins, svc_common::SERVICES_MAP),
        services,
        "the rest adopted"
    );

    // A larger BACKENDS asked for (--max-endpoints): that map is recreated
    // at its new size, the rest adopted.
    let capacity = svc_agent::dataplane::Capacity {
        backends: 1 << 20,
        ..Default::default()
    };
    let backends = map_id(&pins, svc_common::BACKENDS_MAP);
    let dp = Dataplane::load_pinned(&pins, capacity).unwrap();
    assert_eq!(dp.capacity(), capacity);
    drop(dp);
    let info = MapInfo::from_pin(pins.maps_dir().join(svc_common::BACKENDS_MAP)).unwrap();
    assert_ne!(info.id(), backends);
    assert_eq!(info.max_entries(), 1 << 20);
    assert_eq!(map_id(&pins, svc_common::SERVICES_MAP), services);
}
