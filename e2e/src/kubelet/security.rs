//! A container's `securityContext`, applied as a kubelet and container runtime would:
//!
//! - **user and groups**: `runAsUser`/`runAsGroup` (container over pod), supplementary groups
//!   from the pod's `fsGroup` and `supplementalGroups`; the workspace's binaries stand for
//!   images whose user is root, so an unset `runAsUser` means uid 0;
//! - **`runAsNonRoot`**: a container that would run as uid 0 is refused with
//!   `CreateContainerConfigError`, the kubelet's message;
//! - **capabilities**: the container runtime's default set, minus `drop`, plus `add`; `drop:
//!   [ALL]` leaves exactly `add`. A non-root container gets them as ambient capabilities, as
//!   runtimes do;
//! - **`allowPrivilegeEscalation: false`**: `no_new_privs`;
//! - **`readOnlyRootFilesystem`**: the root filesystem is remounted read-only in the
//!   container's mount namespace (volumes stay writable).
//!
//! All of it happens in the container's own mount namespace and process, through `setpriv`
//! (util-linux) just before the binary is executed.

use k8s_openapi::api::core::v1::{Container, Pod};

/// containerd's and CRI-O's default capabilities for a container.
const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// How a container's process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Security {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capability names, upper case without `CAP_`.
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub read_only_root: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            caps: DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect(),
            no_new_privs: false,
            read_only_root: false,
        }
    }
}

impl Security {
    /// The security settings of `container` in `pod`, or the kubelet's refusal.
    pub fn resolve(pod: &Pod, container: &Container) -> Result<Security, String> {
        let pod_ctx = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let ctx = container.security_context.as_ref();
        let uid = ctx.and_then(|c| c.run_as_user).or(pod_ctx.and_then(|p| p.run_as_user)).unwrap_or(0);
        let gid = ctx.and_then(|c| c.run_as_group).or(pod_ctx.and_then(|p| p.run_as_group)).unwrap_or(0);
        let non_root = ctx.and_then(|c| c.run_as_non_root).or(pod_ctx.and_then(|p| p.run_as_non_root));
        if non_root == Some(true) && uid == 0 {
            return Err(
                if ctx.and_then(|c| c.run_as_user).or(pod_ctx.and_then(|p| p.run_as_user)).is_some() {
                    "container's runAsUser breaks non-root policy".to_owned()
                } else {
                    "container has runAsNonRoot and image will run as root".to_owned()
                },
            );
        }
        let mut groups: Vec<i64> = pod_ctx.and_then(|p| p.fs_group).into_iter().collect();
        groups.extend(pod_ctx.and_then(|p| p.supplemental_groups.clone()).into_iter().flatten());
        let ids = |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} is not a valid id"));
        let groups = groups.into_iter().map(|g| ids(g, "group")).collect::<Result<Vec<_>, _>>()?;

        let caps = ctx.and_then(|c| c.capabilities.as_ref());
        let norm = |c: &String| c.trim_start_matches("CAP_").to_ascii_uppercase();
        let drop: Vec<String> = caps.and_then(|c| c.drop.as_ref()).into_iter().flatten().map(norm).collect();
        let add: Vec<String> = caps.and_then(|c| c.add.as_ref()).into_iter().flatten().map(norm).collect();
        let mut set: Vec<String> = if drop.iter().any(|d| d == "ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).filter(|c| !drop.contains(c)).collect()
        };
        for a in add {
            if !set.contains(&a) {
                set.push(a);
            }
        }
        Ok(Security {
            uid: ids(uid, "runAsUser")?,
            gid: ids(gid, "runAsGroup")?,
            groups,
            caps: set,
            no_new_privs: ctx.and_then(|c| c.allow_privilege_escalation) == Some(false),
            read_only_root: ctx.and_then(|c| c.read_only_root_filesystem) == Some(true),
        })
    }

    /// The `setpriv` command line that applies these settings to the program after `--`.
    pub fn setpriv(&self) -> Vec<String> {
        let caps = |prefix: &str| {
            let list: Vec<String> =
                self.caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())).collect();
            format!(
                "{prefix}=-all{}",
                if list.is_empty() { String::new() } else { format!(",{}", list.join(",")) }
            )
        };
        let mut args =
            vec!["setpriv".to_owned(), format!("--reuid={}", self.uid), format!("--regid={}", self.gid)];
        if self.groups.is_empty() {
            args.push("--clear-groups".into());
        } else {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            args.push(format!("--groups={}", groups.join(",")));
        }
        args.push(caps("--bounding-set"));
        args.push(caps("--inh-caps"));
        if self.uid != 0 {
            // A non-root process keeps capabilities across exec only as ambient ones.
            args.push(caps("--ambient-caps"));
        }
        if self.no_new_privs {
            args.push("--no-new-privs".into());
        }
        args.push("--".into());
        args
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(pod_ctx: serde_json::Value, ctx: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": pod_ctx, "containers": [{"name": "c", "securityContext": ctx}]},
        }))
        .expect("a valid pod");
        let container = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, container)
    }

    #[test]
    fn the_charts_hardened_context_runs_as_its_user_with_nothing_else() {
        let (p, c) = pod(
            json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}),
            json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}),
        );
        let s = Security::resolve(&p, &c).expect("allowed");
        assert_eq!((s.uid, s.gid, s.groups.as_slice()), (65532, 65532, &[65532][..]));
        assert!(s.caps.is_empty() && s.no_new_privs && s.read_only_root);
        assert_eq!(
            s.setpriv(),
            [
                "setpriv",
                "--reuid=65532",
                "--regid=65532",
                "--groups=65532",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--no-new-privs",
                "--"
            ]
        );
    }

    #[test]
    fn run_as_non_root_refuses_root_as_the_kubelet_does() {
        let (p, c) = pod(json!({"runAsNonRoot": true}), json!({}));
        assert_eq!(
            Security::resolve(&p, &c),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        let (p, c) = pod(json!({}), json!({"runAsNonRoot": true, "runAsUser": 0}));
        assert!(Security::resolve(&p, &c).is_err());
    }

    #[test]
    fn capabilities_start_from_the_runtime_default() {
        let (p, c) =
            pod(json!({}), json!({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "CAP_NET_RAW"]}}));
        let s = Security::resolve(&p, &c).expect("allowed");
        assert_eq!(s.caps, ["NET_ADMIN", "NET_RAW"]);
        assert!(s.setpriv().contains(&"--bounding-set=-all,+net_admin,+net_raw".to_owned()));
        let (p, c) = pod(json!({}), json!({"capabilities": {"drop": ["NET_RAW"]}}));
        let s = Security::resolve(&p, &c).expect("allowed");
        assert!(!s.caps.contains(&"NET_RAW".to_owned()) && s.caps.contains(&"CHOWN".to_owned()));
        assert_eq!(Security::default().uid, 0);
    }
}
