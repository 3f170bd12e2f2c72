use serde_json::json;

use super::*;

fn sample() -> Snapshot {
    let mut s =
        Snapshot::new(Identity { name: "checkout-1".into(), namespace: "shop".into(), ..Default::default() });
    s.services.push(std::sync::Arc::new(ServiceSnapshot {
        name: "payments".into(),
        namespace: "shop".into(),
        headless: false,
        ports: vec![PortSnapshot {
            port: Some(80),
            name: Some("http".into()),
            addresses: vec!["198.19.0.10:80".parse().expect("an address")],
            endpoints: vec![EndpointSnapshot {
                address: "198.18.0.5:8080".parse().expect("an address"),
                pod: None,
            }],
            ..Default::default()
        }],
        shadowed: vec![],
    }));
    s
}

#[test]
fn round_trips_through_json() {
    let s = sample();
    let decoded = decode(&encode(&s)).expect("its own output decodes");
    assert_eq!(decoded.snapshot, s);
    assert!(decoded.unknown_fields.is_empty());
}

#[test]
fn unknown_fields_from_a_newer_operator_are_ignored_and_listed() {
    let mut value = serde_json::to_value(sample()).expect("serializes");
    value["services"][0]["ports"][0]["weight"] = json!(3);
    value["futureTopLevel"] = json!({"a": 1});
    let decoded = decode(value.to_string().as_bytes()).expect("a newer snapshot is accepted");
    assert_eq!(decoded.snapshot, sample());
    let mut unknown = decoded.unknown_fields.clone();
    unknown.sort();
    assert_eq!(unknown, ["futureTopLevel", "services[0].ports[0].weight"]);
}

#[test]
fn another_schema_is_refused_with_what_to_do() {
    let mut value = serde_json::to_value(sample()).expect("serializes");
    value["schema"] = json!(2);
    let err = decode(value.to_string().as_bytes()).expect_err("schema 2 is not read");
    assert_eq!(err, DecodeError::UnsupportedSchema { found: 2 });
    assert!(err.to_string().contains("upgrade the sidecar"), "{err}");
    value.as_object_mut().expect("an object").remove("schema");
    assert_eq!(decode(value.to_string().as_bytes()), Err(DecodeError::NoSchema));
    assert!(matches!(decode(b"[1]"), Err(DecodeError::NotJson(_))));
}

#[test]
fn a_bad_value_is_refused_with_its_path() {
    let mut value = serde_json::to_value(sample()).expect("serializes");
    value["services"][0]["ports"][0]["endpoints"][0]["address"] = json!("not an address");
    let err = decode(value.to_string().as_bytes()).expect_err("a bad address is refused");
    match err {
        DecodeError::Invalid { path, .. } => assert_eq!(path, "services[0].ports[0].endpoints[0].address"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn the_hash_covers_content_but_not_the_version() {
    let a = sample();
    let mut b = sample();
    b.version = SnapshotVersion { counter: 99, hash: "x".into() };
    assert_eq!(a.content_hash(), b.content_hash(), "the version is not content");
    assert_eq!(a.content_hash().len(), 16);
    std::sync::Arc::make_mut(&mut b.services[0]).ports[0].endpoints.clear();
    assert_ne!(a.content_hash(), b.content_hash());
}

#[test]
fn a_service_without_endpoints_is_still_a_valid_snapshot() {
    let mut s = sample();
    std::sync::Arc::make_mut(&mut s.services[0]).ports[0].endpoints.clear();
    let decoded = decode(&encode(&s)).expect("no endpoints is valid");
    assert!(decoded.snapshot.services[0].ports[0].endpoints.is_empty());
}
