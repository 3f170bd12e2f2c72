//! Volumes, the kubelet's way: each volume becomes a directory under the pod's directory, filled
//! from the API (ConfigMaps, Secrets, a bound ServiceAccount token, downward API fields), and each
//! `volumeMount` a bind mount into the container's root filesystem, in its private mount namespace.
//!
//! This is what lets a pod read `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,
//! namespace}` — the projected volume the ServiceAccount admission plugin adds to every pod — and
//! so talk to the API server with in-cluster configuration. `ip netns exec` already gives each
//! container its own mount namespace (mounts there never reach the host); mount points are made in
//! the container's own copy of its image, never on the host.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    ByteString,
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount, Volume},
    },
};
use kube::{Api, Client, ResourceExt, api::PostParams};

/// A bind mount for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The directory or file on the host (in the pod's directory).
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Fills `<dir>/volumes/<name>` for every volume of `pod`; returns name → directory.
pub(crate) async fn materialize(
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut out = BTreeMap::new();
    let namespace = pod.namespace().unwrap_or_default();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        fill(client, pod, &namespace, volume, &path)
            .await
            .map_err(|e| format!("volume {}: {e}", volume.name))?;
        out.insert(volume.name.clone(), path);
    }
    Ok(out)
}

async fn fill(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    volume: &Volume,
    path: &Path,
) -> Result<(), String> {
    if volume.empty_dir.is_some() {
        // The kubelet makes an emptyDir world-writable, so a non-root container can write it.
        use std::os::unix::fs::PermissionsExt;
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("making {} writable: {e}", path.display()));
    }
    if let Some(cm) = &volume.config_map {
        return config_map(client, namespace, &cm.name, cm.items.as_deref(), cm.optional, path).await;
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.as_deref().unwrap_or_default();
        return self::secret(client, namespace, name, secret.items.as_deref(), secret.optional, path).await;
    }
    if let Some(downward) = &volume.downward_api {
        for item in downward.items.iter().flatten() {
            downward_file(pod, item.field_ref.as_ref().map(|f| f.field_path.as_str()), &item.path, path)?;
        }
        return Ok(());
    }
    if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                let audience = token.audience.clone();
                let value =
                    service_account_token(client, pod, namespace, audience, token.expiration_seconds).await?;
                write(path, &token.path, value.as_bytes())?;
            } else if let Some(cm) = &source.config_map {
                config_map(client, namespace, &cm.name, cm.items.as_deref(), cm.optional, path).await?;
            } else if let Some(secret) = &source.secret {
                self::secret(client, namespace, &secret.name, secret.items.as_deref(), secret.optional, path)
                    .await?;
            } else if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    downward_file(
                        pod,
                        item.field_ref.as_ref().map(|f| f.field_path.as_str()),
                        &item.path,
                        path,
                    )?;
                }
            } else {
                return Err("this projected source is not supported by the e2e kubelet".into());
            }
        }
        return Ok(());
    }
    Err("this volume type is not supported by the e2e kubelet (emptyDir, configMap, secret, downwardAPI, projected are)"
        .into())
}

/// A token for the pod's ServiceAccount, bound to the pod (what the kubelet requests).
async fn service_account_token(
    client: &Client,
    pod: &Pod,
    namespace: &str,
    audience: Option<String>,
    expiration_seconds: Option<i64>,
) -> Result<String, String> {
    let sa =
        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            expiration_seconds,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for ServiceAccount {sa}: {e}"))?;
    response.status.and_then(|s| s.token).ok_or_else(|| "the TokenRequest came back without a token".into())
}

async fn config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    path: &Path,
) -> Result<(), String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
    let Some(cm) = cm else {
        return if optional == Some(true) { Ok(()) } else { Err(format!("ConfigMap {name} not found")) };
    };
    let mut data: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    data.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, ByteString(v))| (k, v)));
    write_keys(path, data, items)
}

async fn secret(
    client: &Client,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    path: &Path,
) -> Result<(), String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?;
    let Some(secret) = secret else {
        return if optional == Some(true) { Ok(()) } else { Err(format!("Secret {name} not found")) };
    };
    let data = secret.data.unwrap_or_default().into_iter().map(|(k, ByteString(v))| (k, v)).collect();
    write_keys(path, data, items)
}

fn write_keys(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for item in items {
                let value = data.get(&item.key).ok_or_else(|| format!("no key {}", item.key))?;
                write(dir, &item.path, value)?;
            }
        }
        None => {
            for (key, value) in &data {
                write(dir, key, value)?;
            }
        }
    }
    Ok(())
}

fn downward_file(pod: &Pod, field: Option<&str>, file: &str, dir: &Path) -> Result<(), String> {
    let field = field.ok_or("downwardAPI resourceFieldRef is not supported by the e2e kubelet")?;
    let value =
        super::downward::field_value(pod, field).ok_or_else(|| format!("unsupported fieldRef {field}"))?;
    write(dir, file, value.as_bytes())
}

/// Writes `relative` under `dir`, refusing paths that climb out of it.
fn write(dir: &Path, relative: &str, value: &[u8]) -> Result<(), String> {
    let rel = Path::new(relative);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("path {relative:?} must be relative and stay inside the volume"));
    }
    let file = dir.join(rel);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(&file, value).map_err(|e| format!("writing {}: {e}", file.display()))
}

/// The bind mounts for a container's `volumeMounts`.
pub(crate) fn mounts(
    container: &k8s_openapi::api::core::v1::Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let base = volumes.get(&vm.name).ok_or_else(|| format!("volumeMount {}: no such volume", vm.name))?;
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if Path::new(sub).is_absolute() || sub.contains("..") => {
                return Err(format!("volumeMount {}: subPath {sub:?} must stay inside the volume", vm.name));
            }
            Some(sub) => base.join(sub),
            None => base.clone(),
        };
        out.push(Mount {
            source,
            target: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only == Some(true),
        });
    }
    Ok(out)
}

/// A bash script that prepares a container's mount namespace (the private one `ip netns exec`
/// makes) and `exec`s `breakwater-e2e-exec`, its first argument, with the rest as the command.
///
/// `rootfs` (the container's copy of its image) becomes a mount point; into it go `/proc`, a
/// small `/dev` (null, zero, full, random, urandom, tty; shm; the fd links), `/sys` read-only and
/// the volumes, parents first, each missing mount point created in the container's root (a file
/// for a file), as a runtime does. With `readOnlyRootFilesystem` the root is remounted read-only
/// last: the mounts on it keep their own flags, so volumes stay writable unless `readOnly`. All
/// of it vanishes with the container's process.
pub(crate) fn launch_script(
    rootfs: &Path,
    mounts: &[Mount],
    security: &super::security::Security,
    working_dir: &str,
    env: &[(String, String)],
) -> String {
    let r = quote(rootfs);
    let mut script = format!(
        "set -e\nR={r}\n\
         mount --bind \"$R\" \"$R\"\n\
         mkdir -p \"$R/proc\" \"$R/dev\" \"$R/sys\"\n\
         mount -t proc -o nosuid,nodev,noexec proc \"$R/proc\"\n\
         mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs \"$R/dev\"\n\
         for d in null zero full random urandom tty; do : > \"$R/dev/$d\"; mount --bind \"/dev/$d\" \"$R/dev/$d\"; done\n\
         mkdir \"$R/dev/shm\" && mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm \"$R/dev/shm\"\n\
         ln -s /proc/self/fd \"$R/dev/fd\"; ln -s /proc/self/fd/0 \"$R/dev/stdin\"; \
         ln -s /proc/self/fd/1 \"$R/dev/stdout\"; ln -s /proc/self/fd/2 \"$R/dev/stderr\"\n\
         mount --rbind /sys \"$R/sys\" && mount -o remount,bind,ro \"$R/sys\"\n"
    );
    // Parents before children (`/run` before `/run/secrets/…`), as container runtimes order them.
    let mut mounts: Vec<&Mount> = mounts.iter().collect();
    mounts.sort_by_key(|m| m.target.components().count());
    for m in mounts {
        let dst = format!("\"$R\"{}", quote(&m.target));
        // A target inside an earlier volume (`/var/run/secrets/…` under an emptyDir on `/run`)
        // is made in that volume, as a container runtime makes mount points.
        if m.source.is_file() {
            script.push_str(&format!("[ -e {dst} ] || {{ mkdir -p \"$(dirname {dst})\" && : > {dst}; }}\n"));
        } else {
            script.push_str(&format!("[ -e {dst} ] || mkdir -p {dst}\n"));
        }
        script.push_str(&format!("mount --bind {} {dst}\n", quote(&m.source)));
        if m.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    let wd = quote(Path::new(working_dir));
    script.push_str(&format!("[ -d \"$R\"{wd} ] || mkdir -p \"$R\"{wd}\n"));
    if security.read_only_root {
        script.push_str("mount -o remount,bind,ro \"$R\"\n");
    }
    let mut exec = vec!["exec \"$1\"".to_owned(), "--root \"$R\"".to_owned(), format!("--cwd {wd}")];
    exec.extend(security.exec_args());
    exec.extend(env.iter().map(|(k, v)| format!("--env {}", quote(Path::new(&format!("{k}={v}"))))));
    exec.push("-- \"${@:2}\"".to_owned());
    script.push_str(&exec.join(" "));
    script.push('\n');
    script
}

/// Single-quotes a path for sh.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_script_mounts_into_the_root_parents_first_and_remounts_the_root_read_only_last() {
        let security = super::super::security::Security {
            uid: 65532,
            gid: 65532,
            groups: vec![],
            caps: vec![],
            no_new_privs: true,
            read_only_root: true,
        };
        let script = launch_script(
            Path::new("/pods/p/rootfs/c"),
            &[
                Mount { source: "/p/v/a".into(), target: "/var/run/x".into(), read_only: true },
                Mount { source: "/p/it's".into(), target: "/data".into(), read_only: false },
            ],
            &security,
            "/work",
            &[("PATH".into(), "/usr/bin".into()), ("Q".into(), "it's".into())],
        );
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[..3], ["set -e", "R='/pods/p/rootfs/c'", "mount --bind \"$R\" \"$R\""]);
        let tail = &lines[lines.len() - 8..];
        assert_eq!(
            tail,
            [
                "[ -e \"$R\"'/data' ] || mkdir -p \"$R\"'/data'",
                "mount --bind '/p/it'\\''s' \"$R\"'/data'",
                "[ -e \"$R\"'/var/run/x' ] || mkdir -p \"$R\"'/var/run/x'",
                "mount --bind '/p/v/a' \"$R\"'/var/run/x'",
                "mount -o remount,bind,ro \"$R\"'/var/run/x'",
                "[ -d \"$R\"'/work' ] || mkdir -p \"$R\"'/work'",
                "mount -o remount,bind,ro \"$R\"",
                "exec \"$1\" --root \"$R\" --cwd '/work' --uid=65532 --gid=65532 --no-new-privs \
                 --env 'PATH=/usr/bin' --env 'Q=it'\\''s' -- \"${@:2}\"",
            ]
        );
    }

    #[test]
    fn keys_are_written_as_files_and_paths_cannot_escape() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let data = BTreeMap::from([("ca.crt".to_owned(), b"pem".to_vec())]);
        write_keys(dir.path(), data.clone(), None).expect("written");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).expect("read"), b"pem");
        let escape = [KeyToPath { key: "ca.crt".into(), path: "../x".into(), ..Default::default() }];
        assert!(write_keys(dir.path(), data, Some(&escape)).is_err());
    }
}
