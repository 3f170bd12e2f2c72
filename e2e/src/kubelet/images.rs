//! Container images → binaries of this workspace: the harness's "image pull".
//!
//! A small, explicit table. An image that is not in it is an error reported on the Pod (as
//! `ErrImagePull`), never a guess: a test that deploys something the harness cannot run must fail
//! and say so.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::bins::workspace_root;

/// Maps image repositories to executables; see the module docs.
#[derive(Debug, Clone)]
pub struct ImageTable {
    /// Repository (no registry, tag or digest needed; matched as a `/`-bounded suffix) → binary.
    images: BTreeMap<String, PathBuf>,
}

impl ImageTable {
    /// The workspace's images, mapped to `target/debug/` (or `$CARGO_TARGET_DIR/debug/`):
    ///
    /// | image | binary |
    /// |---|---|
    /// | `breakwater/fault-server` | `breakwater-fault` |
    /// | `breakwater/sidecar` | `breakwater-sidecar` |
    /// | `breakwater/operator` | `breakwater-operator` |
    /// | `breakwater/e2e-client` | `breakwater-e2e-client` (this crate: GETs a URL, prints answers) |
    pub fn workspace() -> Self {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("debug");
        let mut table = ImageTable { images: BTreeMap::new() };
        for (image, binary) in [
            ("breakwater/fault-server", "breakwater-fault"),
            ("breakwater/sidecar", "breakwater-sidecar"),
            ("breakwater/operator", "breakwater-operator"),
            ("breakwater/e2e-client", "breakwater-e2e-client"),
        ] {
            table.images.insert(image.to_owned(), target.join(binary));
        }
        table
    }

    /// Adds or replaces a mapping.
    pub fn with(mut self, repository: &str, binary: impl Into<PathBuf>) -> Self {
        self.images.insert(repository.to_owned(), binary.into());
        self
    }

    /// The binary for `image` (`[registry/]repository[:tag][@digest]`), or why there is none.
    pub fn resolve(&self, image: &str) -> Result<&Path, String> {
        let repository = repository(image);
        let found = self.images.iter().find(|(key, _)| {
            repository == key.as_str()
                || repository.strip_suffix(key.as_str()).is_some_and(|prefix| prefix.ends_with('/'))
        });
        match found {
            None => Err(format!(
                "image {image:?} is not in the e2e image table (known: {})",
                self.images.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some((_, path)) if !path.is_file() => Err(format!(
                "image {image:?} runs {}, which is not built; run `cargo build --workspace --bins`",
                path.display()
            )),
            Some((_, path)) => Ok(path),
        }
    }

    /// The binary for `image`, at a path no pod's volumes can hide and every user can execute:
    /// containers run as their `runAsUser`, and may mount an emptyDir over `/tmp` — where a
    /// checkout (CI's, say) may well live — or the workspace may sit in a private home
    /// directory (`/root`, mode 0700). So the binary is hard-linked (or, across filesystems,
    /// copied) once into [`SHARED_BIN`], a world-readable directory, and run from there, as a
    /// kubelet runs an image's binary from the image's own root filesystem.
    pub fn resolve_for_any_user(&self, image: &str) -> Result<PathBuf, String> {
        let path = self.resolve(image)?;
        shared_copy(path)
            .map_err(|e| format!("image {image:?}: making {} runnable for any user: {e}", path.display()))
    }
}

/// Where the images' binaries are linked to (created 0755).
pub const SHARED_BIN: &str = "/var/lib/breakwater-e2e/bin";

/// `path` linked into [`SHARED_BIN`] under a name that changes when the binary is rebuilt;
/// links of earlier builds of the same binary are removed.
fn shared_copy(path: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path)?;
    let dir = Path::new(SHARED_BIN);
    std::fs::create_dir_all(dir)?;
    for d in dir.ancestors().take(2) {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("binary");
    let target = dir.join(format!("{name}-{}-{}-{}", meta.dev(), meta.ino(), meta.mtime()));
    if target.is_file() {
        return Ok(target);
    }
    let tmp = dir.join(format!(".{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(path, &tmp).is_err() {
        std::fs::copy(path, &tmp)?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &target)?;
    // Earlier builds of this binary are not needed any more (a running pod keeps its inode).
    let prefix = format!("{name}-");
    for entry in std::fs::read_dir(dir)?.flatten() {
        let p = entry.path();
        let stale = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.strip_prefix(&prefix).is_some_and(|rest| {
                rest.split('-').count() == 3 && rest.split('-').all(|x| x.parse::<u64>().is_ok())
            })
        });
        if stale && p != target {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(target)
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
        let table = ImageTable { images: BTreeMap::new() }.with("breakwater/sh", "/bin/sh");
        assert_eq!(table.resolve("docker.io/breakwater/sh:latest"), Ok(Path::new("/bin/sh")));
        assert!(table.resolve("notbreakwater/sh").is_err_and(|e| e.contains("not in the e2e image table")));
        assert!(table.resolve("nginx:1.27").is_err());
        let missing = ImageTable { images: BTreeMap::new() }.with("breakwater/x", "/nonexistent/x");
        assert!(missing.resolve("breakwater/x").is_err_and(|e| e.contains("not built")));
    }
}
