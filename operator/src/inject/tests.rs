use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;

fn template() -> Template {
    Template::parse(
        "image: breakwater/sidecar\nimagePullPolicy: IfNotPresent\nlogLevel: info\nlogFormat: json\n\
         proxyUid: 2102\nports: {outbound: 15001, inbound: 15006, admin: 15000, probes: 15020}\n\
         excludeOutboundPorts: [5432]\nexcludeInboundPorts: []\n\
         resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}\n\
         gracePeriod: 30s\nconfigApi: \"breakwater.breakwater-system.svc:9090\"\n",
    )
    .expect("the chart's template parses")
}

const NATIVE: Options = Options { native_sidecars: true };

/// A pod as a Deployment's ReplicaSet submits it: two containers, an init container of its own,
/// a volume, labels.
fn pod(extra: Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "checkout-7d9f-", "namespace": "shop", "labels": {"app": "checkout"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "checkout:1"}],
            "containers": [
                {"name": "app", "image": "checkout:1", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "log-shipper", "image": "shipper:2"},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    });
    json_patch::merge(&mut p, &extra);
    serde_json::from_value(p).expect("a pod")
}

/// The pod after the patch, as the API server would store it.
fn patched(p: &Pod, outcome: &Outcome) -> Value {
    let Outcome::Inject { patch, .. } = outcome else { panic!("expected an injection, got {outcome:?}") };
    let mut v = serde_json::to_value(p).expect("json");
    json_patch::patch(&mut v, patch).expect("the patch applies to the pod it was made for");
    v
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array().map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect()).unwrap_or_default()
}

#[test]
fn a_pod_gets_the_init_container_the_native_sidecar_the_volumes_and_the_label() {
    let p = pod(json!({}));
    let outcome = inject(&p, &template(), NATIVE);
    let after = patched(&p, &outcome);
    assert_eq!(names(&after["spec"]["initContainers"]), [INIT, PROXY, "migrate"], "ours first, in order");
    assert_eq!(names(&after["spec"]["containers"]), ["app", "log-shipper"], "the app's containers untouched");
    assert_eq!(
        names(&after["spec"]["volumes"]),
        [
            "data",
            "breakwater-token",
            "breakwater-ca",
            "breakwater-snapshot",
            "breakwater-xtables-lock",
            "breakwater-no-api-token"
        ]
    );
    assert_eq!(after["metadata"]["labels"][INJECTED_LABEL], "true");
    assert_eq!(after["metadata"]["labels"]["app"], "checkout");
    // The whole result, reviewed: every field injection writes.
    insta::assert_json_snapshot!("native", after);
}

#[test]
fn the_probes_port_serves_diagnostics_unless_the_template_turns_them_off() {
    let args = |t: &Template| {
        let p = pod(json!({}));
        let after = patched(&p, &inject(&p, t, NATIVE));
        let proxy = after["spec"]["initContainers"].as_array().expect("list")[1].clone();
        proxy["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert!(args(&template()).contains(&"--probe-diagnostics".to_owned()), "on by default");
    let off = Template { diagnostics: false, ..template() };
    assert!(!args(&off).iter().any(|a| a == "--probe-diagnostics"));
    assert!(args(&off).contains(&"--probe-address".to_owned()), "the probes stay");
}

#[test]
fn the_init_container_has_only_net_admin_and_net_raw_and_the_proxy_nothing() {
    let after = patched(&pod(json!({})), &inject(&pod(json!({})), &template(), NATIVE));
    let init = &after["spec"]["initContainers"][0];
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(init["securityContext"]["privileged"], false);
    assert_eq!(init["securityContext"]["allowPrivilegeEscalation"], false);
    let proxy = &after["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    let sc = &proxy["securityContext"];
    assert_eq!((sc["runAsUser"].as_i64(), sc["runAsNonRoot"].as_bool()), (Some(2102), Some(true)));
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    // The init container tells iptables the same UID and leaves the probes port alone.
    let args: Vec<&str> = init["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(args.windows(2).any(|w| w == ["--proxy-uid", "2102"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--skip-inbound-ports", "15020"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--skip-outbound-ports", "5432"]), "{args:?}");
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container_and_holds_the_app_until_it_listens() {
    for (options, annotation) in [
        (Options { native_sidecars: false }, json!({})),
        (NATIVE, json!({"metadata": {"annotations": {annotations::NATIVE_SIDECAR: "false"}}})),
    ] {
        let p = pod(annotation);
        let after = patched(&p, &inject(&p, &template(), options));
        assert_eq!(names(&after["spec"]["initContainers"]), [INIT, "migrate"]);
        assert_eq!(names(&after["spec"]["containers"]), [PROXY, "app", "log-shipper"]);
        let proxy = &after["spec"]["containers"][0];
        assert!(proxy.get("restartPolicy").is_none());
        let wait = &proxy["lifecycle"]["postStart"]["exec"]["command"];
        assert_eq!((&wait[0], &wait[1]), (&json!("breakwater-sidecar"), &json!("wait")), "{wait}");
    }
}

#[test]
fn injection_is_idempotent() {
    let p = pod(json!({}));
    let once = patched(&p, &inject(&p, &template(), NATIVE));
    let again: Pod = serde_json::from_value(once).expect("a pod");
    let outcome = inject(&again, &template(), NATIVE);
    assert!(matches!(outcome, Outcome::Skip { reason: SkipReason::AlreadyInjected, .. }), "{outcome:?}");
}

#[test]
fn host_network_and_opted_out_pods_are_left_alone() {
    let cases = [
        (json!({"spec": {"hostNetwork": true}}), SkipReason::HostNetwork),
        (json!({"metadata": {"annotations": {"breakwater.dev/inject": "disabled"}}}), SkipReason::OptedOut),
        (json!({"metadata": {"labels": {"breakwater.dev/inject": "disabled"}}}), SkipReason::OptedOut),
    ];
    for (extra, reason) in cases {
        let outcome = inject(&pod(extra.clone()), &template(), NATIVE);
        assert!(matches!(&outcome, Outcome::Skip { reason: r, .. } if *r == reason), "{extra}: {outcome:?}");
    }
}

#[test]
fn a_pod_that_collides_with_what_injection_adds_is_refused_naming_the_field() {
    let cases = [
        (
            json!({"spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 15001}]}]}}),
            "spec.containers[0].ports[0].containerPort: 15001 is the proxy's outbound port",
        ),
        (
            json!({"spec": {"initContainers": [{"name": "breakwater-init", "image": "x"}]}}),
            "spec.initContainers[0].name: \"breakwater-init\"",
        ),
        (
            json!({"spec": {"volumes": [{"name": "breakwater-ca", "emptyDir": {}}]}}),
            "spec.volumes[0].name: \"breakwater-ca\"",
        ),
    ];
    for (extra, says) in cases {
        match inject(&pod(extra.clone()), &template(), NATIVE) {
            Outcome::Refuse(message) => assert!(message.contains(says), "{extra}: {message}"),
            other => panic!("{extra}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn annotations_override_the_template_and_unusable_values_are_warnings() {
    let p = pod(json!({"metadata": {"annotations": {
        "breakwater.dev/exclude-outbound-ports": "6379, 11211",
        "breakwater.dev/exclude-inbound-ports": "9100",
        "breakwater.dev/proxy-cpu-request": "100m",
        "breakwater.dev/proxy-memory-limit": "256Mi",
        "breakwater.dev/log-level": "debug",
    }}}));
    let outcome = inject(&p, &template(), NATIVE);
    let Outcome::Inject { warnings, .. } = &outcome else { panic!("{outcome:?}") };
    assert!(warnings.is_empty(), "{warnings:?}");
    let after = patched(&p, &outcome);
    let args = after["spec"]["initContainers"][0]["args"].to_string();
    assert!(args.contains("\"--skip-outbound-ports\",\"5432,6379,11211\""), "{args}");
    assert!(args.contains("\"--skip-inbound-ports\",\"15020,9100\""), "{args}");
    let proxy = &after["spec"]["initContainers"][1];
    assert_eq!(proxy["resources"]["requests"]["cpu"], "100m");
    assert_eq!(proxy["resources"]["requests"]["memory"], "32Mi", "the template's default for the rest");
    assert_eq!(proxy["resources"]["limits"]["memory"], "256Mi");
    assert!(proxy["env"].to_string().contains("{\"name\":\"BREAKWATER_LOG\",\"value\":\"debug\"}"));

    let p = pod(json!({"metadata": {"annotations": {
        "breakwater.dev/exclude-outbound-ports": "80,http",
        "breakwater.dev/proxy-memory-limit": "lots",
        "breakwater.dev/log-level": "loud",
        "breakwater.dev/native-sidecar": "maybe",
    }}}));
    let outcome = inject(&p, &template(), NATIVE);
    let Outcome::Inject { warnings, .. } = &outcome else { panic!("{outcome:?}") };
    let all = warnings.join("\n");
    for says in [
        "metadata.annotations[breakwater.dev/exclude-outbound-ports]: \"http\" is not a port",
        "metadata.annotations[breakwater.dev/proxy-memory-limit]: \"lots\" is not a quantity",
        "metadata.annotations[breakwater.dev/log-level]: \"loud\"",
        "metadata.annotations[breakwater.dev/native-sidecar]: \"maybe\"",
    ] {
        assert!(all.contains(says), "no {says:?} in:\n{all}");
    }
    let after = patched(&p, &outcome);
    assert_eq!(after["spec"]["initContainers"][1]["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(after["spec"]["initContainers"][1]["restartPolicy"], "Always", "native stays on");
}

#[test]
fn a_bare_pod_without_labels_init_containers_or_volumes_is_patched_too() {
    let p: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }))
    .expect("a pod");
    let after = patched(&p, &inject(&p, &template(), NATIVE));
    assert_eq!(names(&after["spec"]["initContainers"]), [INIT, PROXY]);
    assert_eq!(after["metadata"]["labels"][INJECTED_LABEL], "true");
    assert_eq!(names(&after["spec"]["volumes"]).len(), VOLUMES.len());
}

#[test]
fn a_template_with_a_typo_or_clashing_ports_is_an_error() {
    let base = "configApi: \"x:9090\"\n";
    assert!(Template::parse(base).is_ok(), "every other key has a default");
    let typo = Template::parse(&format!("{base}proxyUID: 2102\n")).expect_err("unknown key");
    assert!(typo.contains("proxyUID"), "{typo}");
    let clash = Template::parse(&format!("{base}ports: {{outbound: 15000}}\n")).expect_err("clash");
    assert!(clash.contains("must differ"), "{clash}");
    let root = Template::parse(&format!("{base}proxyUid: 0\n")).expect_err("root");
    assert!(root.contains("proxyUid"), "{root}");
}

fn review(operation: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        },
    }))
    .expect("json")
}

fn response(review: &kube::core::admission::AdmissionReview<kube::core::DynamicObject>) -> Value {
    serde_json::to_value(review).expect("json")["response"].clone()
}

#[test]
fn the_webhook_answers_a_creation_with_the_patch_and_its_warnings() {
    let p = pod(json!({"metadata": {"annotations": {"breakwater.dev/log-level": "loud"}}}));
    let webhook::Answer { review: out, decision, .. } =
        webhook::answer(&review("CREATE", serde_json::to_value(&p).expect("json")), &template(), NATIVE);
    assert_eq!(decision, webhook::Decision::Injected);
    let r = response(&out);
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002", "the request's uid is echoed");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    // kube writes the patch's bytes as a JSON array (Go's decoder takes that for a []byte too).
    let bytes: Vec<u8> = serde_json::from_value(r["patch"].clone()).expect("a patch");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
    let mut v = serde_json::to_value(&p).expect("json");
    json_patch::patch(&mut v, &patch).expect("applies");
    assert_eq!(names(&v["spec"]["initContainers"]), [INIT, PROXY, "migrate"]);
    assert!(r["warnings"][0].as_str().is_some_and(|w| w.contains("breakwater.dev/log-level")), "{r}");
}

#[test]
fn the_webhook_leaves_other_operations_and_skipped_pods_alone_and_refuses_collisions() {
    let p = serde_json::to_value(pod(json!({}))).expect("json");
    let webhook::Answer { review: out, decision, .. } =
        webhook::answer(&review("UPDATE", p.clone()), &template(), NATIVE);
    assert_eq!(decision, webhook::Decision::NotConcerned);
    assert_eq!(
        (response(&out)["allowed"].clone(), response(&out).get("patch").cloned()),
        (json!(true), None)
    );

    let host = serde_json::to_value(pod(json!({"spec": {"hostNetwork": true}}))).expect("json");
    let webhook::Answer { review: out, decision, .. } =
        webhook::answer(&review("CREATE", host), &template(), NATIVE);
    assert!(matches!(decision, webhook::Decision::Skipped(SkipReason::HostNetwork, _)), "{decision:?}");
    assert_eq!(response(&out)["allowed"], true);
    assert!(response(&out).get("patch").is_none());

    let clash = serde_json::to_value(pod(
        json!({"spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 15006}]}]}}),
    ))
    .expect("json");
    let webhook::Answer { review: out, decision, .. } =
        webhook::answer(&review("CREATE", clash), &template(), NATIVE);
    assert!(matches!(decision, webhook::Decision::Refused(_)), "{decision:?}");
    let r = response(&out);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.containers[0].ports[0].containerPort")),
        "{r}"
    );
}

#[test]
fn a_malformed_admission_review_gets_a_clear_refusal_not_a_panic() {
    for body in [
        &b"not json"[..],
        b"{}",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#,
    ] {
        let webhook::Answer { review: out, decision, .. } = webhook::answer(body, &template(), NATIVE);
        assert!(matches!(decision, webhook::Decision::Invalid(_)), "{decision:?}");
        let r = response(&out);
        assert_eq!(r["allowed"], false);
        assert!(r["status"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    }
}

#[test]
fn events_about_a_skipped_pod_name_its_controller_or_the_pod_and_never_in_a_dry_run() {
    let owned = pod(json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "checkout-7d9f", "uid": "u-1", "controller": true}]}, "spec": {"hostNetwork": true}}));
    let a =
        webhook::answer(&review("CREATE", serde_json::to_value(&owned).expect("json")), &template(), NATIVE);
    let s = a.subject.expect("a subject");
    assert_eq!(
        (s.kind.as_deref(), s.name.as_deref(), s.namespace.as_deref()),
        (Some("ReplicaSet"), Some("checkout-7d9f"), Some("shop"))
    );

    let named = pod(json!({"metadata": {"name": "solo"}, "spec": {"hostNetwork": true}}));
    let a =
        webhook::answer(&review("CREATE", serde_json::to_value(&named).expect("json")), &template(), NATIVE);
    let s = a.subject.expect("a subject");
    assert_eq!((s.kind.as_deref(), s.name.as_deref()), (Some("Pod"), Some("solo")));

    let mut dry: Value =
        serde_json::from_slice(&review("CREATE", serde_json::to_value(&named).expect("json"))).expect("json");
    dry["request"]["dryRun"] = json!(true);
    let a = webhook::answer(&serde_json::to_vec(&dry).expect("json"), &template(), NATIVE);
    assert!(a.subject.is_none(), "a dry run records nothing");
}

fn configuration(hooks: Value) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration {
    serde_json::from_value(json!({"metadata": {"name": "bw"}, "webhooks": hooks})).expect("configuration")
}

fn hook(name: &str, bundle: Option<&str>, policy: &str) -> Value {
    use base64::Engine as _;
    let mut config = json!({"service": {"name": "bw", "namespace": "ns"}});
    if let Some(b) = bundle {
        config["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(b));
    }
    json!({"name": name, "clientConfig": config, "failurePolicy": policy, "sideEffects": "None", "admissionReviewVersions": ["v1"]})
}

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn the_operator_sets_its_ca_bundle_and_then_the_configured_failure_policy() {
    use webhook::{Wanted, configuration_ops};
    let fresh = configuration(json!([hook("a", None, "Ignore"), hook("b", Some(CA), "Ignore")]));
    let wanted = Wanted { ca_bundle: Some(CA), trust: CA, failure_policy: "Fail" };
    let ops = configuration_ops(&fresh, wanted);
    let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
    assert_eq!(
        paths,
        ["/webhooks/0/clientConfig/caBundle", "/webhooks/0/failurePolicy", "/webhooks/1/failurePolicy"],
        "{ops:?}"
    );
    assert_eq!(ops[1]["value"], "Fail");
    let done = configuration(json!([hook("a", Some(CA), "Fail"), hook("b", Some(CA), "Fail")]));
    assert!(configuration_ops(&done, wanted).is_empty(), "nothing to do twice");
    // The default policy leaves a rendered Ignore as it is.
    let ignore = Wanted { failure_policy: "Ignore", ..wanted };
    assert_eq!(
        configuration_ops(&configuration(json!([hook("a", Some(CA), "Ignore")])), ignore),
        Vec::<Value>::new()
    );
}

#[test]
fn with_external_certificates_the_failure_policy_waits_for_a_bundle_that_trusts_us() {
    use webhook::{Wanted, configuration_ops};
    let wanted = Wanted { ca_bundle: None, trust: CA, failure_policy: "Fail" };
    let before = configuration(json!([
        hook("a", None, "Ignore"),
        hook("b", Some("-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----\n"), "Ignore")
    ]));
    assert!(
        configuration_ops(&before, wanted).is_empty(),
        "no caBundle written, no Fail before cert-manager injects ours"
    );
    let bundle = format!("{CA}-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n");
    let injected = configuration(json!([hook("a", Some(&bundle), "Ignore")]));
    let ops = configuration_ops(&injected, wanted);
    assert_eq!(ops, vec![json!({"op": "add", "path": "/webhooks/0/failurePolicy", "value": "Fail"})]);
}

#[test]
fn with_a_tracing_endpoint_the_proxy_gets_the_otel_variables_and_without_none() {
    let env_of = |t: &Template| {
        let p = pod(json!({}));
        let after = patched(&p, &inject(&p, t, NATIVE));
        let proxy = after["spec"]["initContainers"]
            .as_array()
            .expect("init containers")
            .iter()
            .find(|c| c["name"] == PROXY)
            .cloned();
        let env = proxy.expect("the proxy")["env"].as_array().cloned().unwrap_or_default();
        env.iter()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("OTEL_")))
            .map(|e| format!("{}={}", e["name"].as_str().unwrap_or(""), e["value"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
    };
    assert!(env_of(&template()).is_empty(), "tracing is off by default");
    let traced = Template::parse(
        "configApi: \"x:9090\"\ntracing: {endpoint: \"http://otel.observability:4317\", samplerArg: 0.5}\n",
    )
    .expect("a template with tracing");
    assert_eq!(
        env_of(&traced),
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel.observability:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
            "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG=0.5",
        ]
    );
    for (bad, field) in [
        ("{endpoint: \"otel:4317\"}", "tracing.endpoint"),
        ("{protocol: http/json}", "tracing.protocol"),
        ("{sampler: sometimes}", "tracing.sampler"),
        ("{samplerArg: 2}", "tracing.samplerArg"),
        ("{endpiont: \"http://otel:4317\"}", "endpiont"),
    ] {
        let e = Template::parse(&format!("configApi: \"x:9090\"\ntracing: {bad}\n")).expect_err(bad);
        assert!(e.contains(field), "{bad}: {e}");
    }
}
