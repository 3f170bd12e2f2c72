//! A container's `securityContext`, applied as a kubelet and container runtime would:
//!
//! - **user and groups**: `runAsUser`/`runAsGroup` (container over pod, over the image's
//!   `User`), supplementary groups from the pod's `fsGroup` and `supplementalGroups`;
//! - **`runAsNonRoot`**: a container that would run as uid 0 is refused with
//!   `CreateContainerConfigError`, the kubelet's message;
//! - **capabilities**: the container runtime's default set, minus `drop`, plus `add`; `drop:
//!   [ALL]` leaves exactly `add`. As with containerd, none are ambient: a non-root process has
//!   no capabilities after `exec`;
//! - **`allowPrivilegeEscalation: false`**: `no_new_privs`;
//! - **`readOnlyRootFilesystem`**: the root filesystem is remounted read-only in the
//!   container's mount namespace (volumes stay writable).
//!
//! All of it happens in the container's own mount namespace and process, through
//! `breakwater-e2e-exec` just before the image's program is executed.

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
    /// The security settings of `container` in `pod` running an image whose `User` is
    /// `image_user` (`uid[:gid]`, empty for root), or the kubelet's refusal.
    pub fn resolve(pod: &Pod, container: &Container, image_user: &str) -> Result<Security, String> {
        let pod_ctx = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let ctx = container.security_context.as_ref();
        let (image_uid, image_gid) = match image_user.split_once(':') {
            Some((u, g)) => (u.parse::<i64>().ok(), g.parse::<i64>().ok()),
            None if image_user.is_empty() => (Some(0), Some(0)),
            None => (image_user.parse::<i64>().ok(), Some(0)),
        };
        let run_as_user = ctx.and_then(|c| c.run_as_user).or(pod_ctx.and_then(|p| p.run_as_user));
        let non_root = ctx.and_then(|c| c.run_as_non_root).or(pod_ctx.and_then(|p| p.run_as_non_root));
        let uid = match (run_as_user, image_uid) {
            (Some(uid), _) => uid,
            (None, Some(uid)) => uid,
            (None, None) if non_root == Some(true) => {
                return Err(format!(
                    "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "image user {image_user:?} is not numeric; the e2e kubelet has no /etc/passwd lookup"
                ));
            }
        };
        let gid = ctx
            .and_then(|c| c.run_as_group)
            .or(pod_ctx.and_then(|p| p.run_as_group))
            .or(if run_as_user.is_some() { None } else { image_gid })
            .unwrap_or(0);
        if non_root == Some(true) && uid == 0 {
            return Err(if run_as_user.is_some() {
                "container's runAsUser breaks non-root policy".to_owned()
            } else {
                "container has runAsNonRoot and image will run as root".to_owned()
            });
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

    /// The `breakwater-e2e-exec` options that apply these settings.
    pub fn exec_args(&self) -> Vec<String> {
        let mut args = vec![format!("--uid={}", self.uid), format!("--gid={}", self.gid)];
        if !self.groups.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            args.push(format!("--groups={}", groups.join(",")));
        }
        if !self.caps.is_empty() {
            args.push(format!("--caps={}", self.caps.join(",")));
        }
        if self.no_new_privs {
            args.push("--no-new-privs".into());
        }
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
        let s = Security::resolve(&p, &c, "").expect("allowed");
        assert_eq!((s.uid, s.gid, s.groups.as_slice()), (65532, 65532, &[65532][..]));
        assert!(s.caps.is_empty() && s.no_new_privs && s.read_only_root);
        assert_eq!(s.exec_args(), ["--uid=65532", "--gid=65532", "--groups=65532", "--no-new-privs"]);
    }

    #[test]
    fn run_as_non_root_refuses_root_as_the_kubelet_does() {
        let (p, c) = pod(json!({"runAsNonRoot": true}), json!({}));
        assert_eq!(
            Security::resolve(&p, &c, ""),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        let (p, c) = pod(json!({}), json!({"runAsNonRoot": true, "runAsUser": 0}));
        assert!(Security::resolve(&p, &c, "").is_err());
    }

    #[test]
    fn capabilities_start_from_the_runtime_default() {
        let (p, c) =
            pod(json!({}), json!({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "CAP_NET_RAW"]}}));
        let s = Security::resolve(&p, &c, "").expect("allowed");
        assert_eq!(s.caps, ["NET_ADMIN", "NET_RAW"]);
        assert!(s.exec_args().contains(&"--caps=NET_ADMIN,NET_RAW".to_owned()));
        let (p, c) = pod(json!({}), json!({"capabilities": {"drop": ["NET_RAW"]}}));
        let s = Security::resolve(&p, &c, "").expect("allowed");
        assert!(!s.caps.contains(&"NET_RAW".to_owned()) && s.caps.contains(&"CHOWN".to_owned()));
        assert_eq!(Security::default().uid, 0);
    }

    #[test]
    fn the_images_user_applies_unless_the_pod_says_otherwise() {
        let (p, c) = pod(json!({"runAsNonRoot": true}), json!({}));
        let s = Security::resolve(&p, &c, "2102:2103").expect("the image's user is not root");
        assert_eq!((s.uid, s.gid), (2102, 2103));
        assert_eq!(
            Security::resolve(&p, &c, "0"),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        assert!(Security::resolve(&p, &c, "proxy").is_err_and(|e| e.contains("non-numeric user (proxy)")));
        let (p, c) = pod(json!({"runAsUser": 7}), json!({}));
        let s = Security::resolve(&p, &c, "2102:2103").expect("allowed");
        assert_eq!((s.uid, s.gid), (7, 0));
    }
}
