//! Container images: the OCI archives `make images` writes (`target/images/<name>.oci.tar`),
//! "pulled" by the harness's kubelet.
//!
//! A small, explicit table maps image repositories to archives. An image that is not in it, an
//! archive that is missing or unreadable, is an error reported on the Pod as `ErrImagePull` (with
//! what to run), never a guess: a test that deploys something the harness cannot run must fail
//! and say so. A pulled image is unpacked once per digest (layers in order, whiteouts honoured,
//! by umoci) into [`IMAGE_CACHE`]; each container start copies that root filesystem, as a
//! runtime gives every container its own writable layer.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use serde_json::Value;

use crate::oci::{Archive, images_dir};

/// Where pulled images are unpacked, one directory per manifest digest (`<hex>/rootfs`).
pub const IMAGE_CACHE: &str = "/var/lib/breakwater-e2e/images";

/// Maps image repositories to OCI archives; see the module docs. Clones share one table.
#[derive(Debug, Clone)]
pub struct ImageTable {
    /// Repository (no registry, tag or digest needed; matched as a `/`-bounded suffix) → archive.
    images: Arc<RwLock<BTreeMap<String, PathBuf>>>,
    cache: PathBuf,
}

/// An image ready to run: its digest, unpacked root filesystem and configuration.
#[derive(Debug, Clone)]
pub(crate) struct Pulled {
    /// `repository@sha256:…`, as a kubelet reports `imageID`.
    pub image_id: String,
    /// The unpacked root filesystem (shared: copied, never written).
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// What the image's configuration says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageConfig {
    /// `uid[:gid]`, or empty for root.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
}

impl ImageConfig {
    fn from_json(config: &Value) -> Self {
        let c = &config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
        };
        ImageConfig {
            user: c["User"].as_str().unwrap_or_default().to_owned(),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"])
                .into_iter()
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (e, String::new()),
                })
                .collect(),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

impl ImageTable {
    /// The workspace's images, from `target/images/` (or `$CARGO_TARGET_DIR/images/`):
    ///
    /// | image | archive |
    /// |---|---|
    /// | `breakwater/fault-server` | `fault-server.oci.tar` |
    /// | `breakwater/sidecar` | `sidecar.oci.tar` |
    /// | `breakwater/operator` | `operator.oci.tar` |
    /// | `breakwater/e2e-client` | `e2e-client.oci.tar` (GETs a URL, prints answers) |
    pub fn workspace() -> Self {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(|t| PathBuf::from(t).join("images"))
            .unwrap_or_else(images_dir);
        let table = ImageTable { images: Default::default(), cache: PathBuf::from(IMAGE_CACHE) };
        for name in ["fault-server", "sidecar", "operator", "e2e-client"] {
            table.add(&format!("breakwater/{name}"), dir.join(format!("{name}.oci.tar")));
        }
        table
    }

    /// Adds or replaces a mapping, for every clone of this table (a running kubelet's too).
    pub fn add(&self, repository: &str, archive: impl Into<PathBuf>) {
        self.images.write().unwrap_or_else(|e| e.into_inner()).insert(repository.to_owned(), archive.into());
    }

    /// The repository and archive for `image` (`[registry/]repository[:tag][@digest]`), or why
    /// there is none.
    pub fn resolve<'a>(&self, image: &'a str) -> Result<(&'a str, PathBuf), String> {
        let repository = repository(image);
        let images = self.images.read().unwrap_or_else(|e| e.into_inner());
        let found = images.iter().find(|(key, _)| {
            repository == key.as_str()
                || repository.strip_suffix(key.as_str()).is_some_and(|prefix| prefix.ends_with('/'))
        });
        match found {
            None => Err(format!(
                "image {image:?} is not in the e2e image table (known: {})",
                images.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some((_, path)) if !path.is_file() => {
                Err(format!("image {image:?}: {} is not built; run `make images`", path.display()))
            }
            Some((_, path)) => Ok((repository, path.clone())),
        }
    }

    /// Pulls `image`: its archive read, its root filesystem unpacked (once per digest).
    /// Blocking (tar, umoci): call it off the async threads.
    pub(crate) fn pull(&self, image: &str) -> Result<Pulled, String> {
        let (repository, path) = self.resolve(image)?;
        let archive = Archive::open(&path).map_err(|e| format!("image {image:?}: {e}"))?;
        let hex = archive.digest().trim_start_matches("sha256:");
        let dir = self.cache.join(hex);
        if dir.join("rootfs").is_dir() {
            // Used now: [`prune`] keeps it.
            let _ = std::fs::File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
        } else {
            unpack(&archive, &self.cache, &dir).map_err(|e| format!("image {image:?}: {e}"))?;
            prune(&self.cache, &dir);
        }
        Ok(Pulled {
            image_id: format!("{repository}@{}", archive.digest()),
            rootfs: dir.join("rootfs"),
            config: ImageConfig::from_json(archive.config()),
        })
    }
}

/// Removes the cache's images (and abandoned unpacks) nobody pulled for an hour, but `keep`:
/// each `make images` after a change adds new digests.
fn prune(cache: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let idle = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if path != keep && idle.is_some_and(|idle| idle > std::time::Duration::from_secs(3600)) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Unpacks `archive` into `dir/rootfs`, atomically: into a fresh sibling first, then renamed,
/// so that concurrent pulls (pods starting together, other test binaries) never see half an
/// image.
fn unpack(archive: &Archive, cache: &Path, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(cache)
        .map_err(|e| format!("creating a directory in {}: {e}", cache.display()))?;
    archive.unpack(&staging.path().join("rootfs")).map_err(|e| e.to_string())?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another pull of the same digest won the race: its copy is as good as ours.
        if !dir.join("rootfs").is_dir() {
            return Err(format!("moving the unpacked image to {}: {e}", dir.display()));
        }
    }
    Ok(())
}

/// `ghcr.io/x/breakwater/sidecar:0.1@sha256:..` → `ghcr.io/x/breakwater/sidecar`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        // A colon after the last slash is a tag; before it, a registry port.
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_drops_tag_and_digest_but_keeps_registry_port() {
        assert_eq!(repository("breakwater/sidecar:0.1.0"), "breakwater/sidecar");
        assert_eq!(repository("localhost:5000/breakwater/sidecar"), "localhost:5000/breakwater/sidecar");
        assert_eq!(
            repository("ghcr.io/b/breakwater/fault-server:1@sha256:abc"),
            "ghcr.io/b/breakwater/fault-server"
        );
    }

    #[test]
    fn unknown_images_are_errors_and_suffixes_match_on_path_boundaries() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let archive = dir.path().join("sh.oci.tar");
        std::fs::write(&archive, b"not a tar").expect("written");
        let table = ImageTable { images: Default::default(), cache: dir.path().join("cache") };
        table.add("breakwater/sh", &archive);
        table.clone().add("breakwater/x", "/nonexistent/x.oci.tar");
        assert_eq!(
            table.resolve("docker.io/breakwater/sh:latest"),
            Ok(("docker.io/breakwater/sh", archive.clone()))
        );
        assert!(table.resolve("notbreakwater/sh").is_err_and(|e| e.contains("not in the e2e image table")));
        assert!(table.resolve("nginx:1.27").is_err());
        assert!(table.resolve("breakwater/x").is_err_and(|e| e.contains("run `make images`")));
        let corrupt = table.pull("breakwater/sh").map(|p| p.image_id);
        assert!(corrupt.as_ref().is_err_and(|e| e.contains("not a readable OCI archive")), "{corrupt:?}");
    }

    #[test]
    fn the_image_config_gives_user_entrypoint_cmd_env_and_working_dir() {
        let config = ImageConfig::from_json(&serde_json::json!({"config": {
            "User": "2102:2102", "Entrypoint": ["/bin/x"], "Cmd": ["run"],
            "Env": ["PATH=/usr/bin", "EMPTY"], "WorkingDir": "/w"
        }}));
        assert_eq!(
            config,
            ImageConfig {
                user: "2102:2102".into(),
                entrypoint: vec!["/bin/x".into()],
                cmd: vec!["run".into()],
                env: vec![("PATH".into(), "/usr/bin".into()), ("EMPTY".into(), String::new())],
                working_dir: "/w".into(),
            }
        );
        assert_eq!(ImageConfig::from_json(&serde_json::json!({})), ImageConfig::default());
    }
}
