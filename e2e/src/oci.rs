//! The OCI image archives `make images` writes (`target/images/<name>.oci.tar`, see
//! `images/build.sh`): their index, manifest and config, their root filesystem unpacked, and a
//! file tree to compare two root filesystems by.
//!
//! Unpacking is umoci's (`umoci raw unpack`), the tool that wrote them: layers in order,
//! whiteouts honoured, owners and modes as the layers say (as root).

use std::{
    collections::BTreeMap,
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::{Error, Result, bins::workspace_root, network::run};

/// `target/images/` of this workspace, where `make images` writes the archives.
pub fn images_dir() -> PathBuf {
    workspace_root().join("target").join("images")
}

/// An OCI image archive, extracted into a private OCI image layout.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    layout: TempDir,
    reference: String,
    digest: String,
    manifest: Value,
    config: Value,
}

impl Archive {
    /// The image `make images` built as `target/images/<name>.oci.tar`.
    pub fn built(name: &str) -> Result<Self> {
        Self::open(&images_dir().join(format!("{name}.oci.tar")))
    }

    /// Reads an archive holding one image (the `oci-archive:` layout skopeo and umoci use).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Environment(format!("{} is missing: run `make images`", path.display())));
        }
        let layout = tempfile::Builder::new()
            .prefix("bw-oci-")
            .tempdir()
            .map_err(Error::io("creating a directory for an OCI layout"))?;
        let dir = layout.path().to_str().expect("temporary paths are UTF-8");
        run("tar", &["-xf", path.to_str().expect("archive paths are UTF-8"), "-C", dir]).map_err(|e| {
            Error::Other(format!(
                "{} is not a readable OCI archive (run `make images` again): {e}",
                path.display()
            ))
        })?;
        let index = read_json(&layout.path().join("index.json"))?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let [descriptor] = manifests.as_slice() else {
            return Err(Error::Other(format!(
                "{}: expected one image in index.json, found {}",
                path.display(),
                manifests.len()
            )));
        };
        let digest = string(descriptor, "digest", path)?;
        let reference = descriptor["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .ok_or_else(|| {
                Error::Other(format!("{}: the image in index.json has no ref.name", path.display()))
            })?
            .to_owned();
        let manifest = read_json(&blob_path(layout.path(), &digest)?)?;
        let config = read_json(&blob_path(layout.path(), &string(&manifest["config"], "digest", path)?)?)?;
        Ok(Self { path: path.to_owned(), layout, reference, digest, manifest, config })
    }

    /// Where the archive is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tag it was written with (the release's version).
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The manifest's digest (`sha256:…`): what a registry calls this image.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The image manifest.
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    /// The image configuration (`config.User`, `config.Entrypoint`, `config.Labels`, `created`, …).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// What a registry stores and a node pulls: the compressed layers, the config and the manifest.
    pub fn compressed_size(&self) -> u64 {
        let layers: u64 =
            self.manifest["layers"].as_array().into_iter().flatten().filter_map(|l| l["size"].as_u64()).sum();
        let manifest = serde_json::to_vec(&self.manifest).map(|m| m.len() as u64).unwrap_or(0);
        layers + self.manifest["config"]["size"].as_u64().unwrap_or(0) + manifest
    }

    /// Unpacks the root filesystem into `rootfs` (which must not exist yet), as root.
    pub fn unpack(&self, rootfs: &Path) -> Result<()> {
        let image = format!("{}:{}", self.layout.path().display(), self.reference);
        run("umoci", &["raw", "unpack", "--image", &image, rootfs.to_str().expect("rootfs paths are UTF-8")])
            .map(drop)
            .map_err(|e| Error::Other(format!("unpacking {}: {e}", self.path.display())))
    }
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Other(format!("unsupported digest {digest:?}")))?;
    Ok(layout.join("blobs").join("sha256").join(hex))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| Error::Other(format!("{} is not JSON: {e}", path.display())))
}

fn string(value: &Value, key: &str, archive: &Path) -> Result<String> {
    value[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Other(format!("{}: a descriptor has no {key}", archive.display())))
}

/// One entry of a root filesystem, as an image records it.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is, with its content.
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The type of an [`Entry`], with what identifies its content.
#[derive(Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: its size and SHA-256.
    File {
        /// Bytes.
        size: u64,
        /// SHA-256 of the content.
        sha256: Vec<u8>,
    },
    /// A symbolic link and its target.
    Symlink(PathBuf),
    /// A device, fifo or socket.
    Special,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Dir => write!(f, "dir")?,
            Kind::File { size, sha256 } => {
                write!(f, "file {size} bytes sha256:")?;
                sha256.iter().take(6).try_for_each(|b| write!(f, "{b:02x}"))?;
            }
            Kind::Symlink(target) => write!(f, "symlink -> {}", target.display())?,
            Kind::Special => write!(f, "special")?,
        }
        write!(f, " {:04o} {}:{}", self.mode, self.uid, self.gid)
    }
}

/// Every entry under `root`, by path relative to it (`usr/local/bin/…`), `root` itself left out.
pub fn tree(root: &Path) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for item in fs::read_dir(&dir).map_err(Error::io(format!("listing {}", dir.display())))? {
            let path = item.map_err(Error::io(format!("listing {}", dir.display())))?.path();
            let meta =
                fs::symlink_metadata(&path).map_err(Error::io(format!("reading {}", path.display())))?;
            let kind = if meta.is_dir() {
                pending.push(path.clone());
                Kind::Dir
            } else if meta.is_file() {
                let content = fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
                Kind::File { size: meta.len(), sha256: Sha256::digest(&content).to_vec() }
            } else if meta.file_type().is_symlink() {
                Kind::Symlink(fs::read_link(&path).map_err(Error::io(format!("reading {}", path.display())))?)
            } else {
                Kind::Special
            };
            let relative = path.strip_prefix(root).expect("walked from root").to_owned();
            entries.insert(
                relative,
                Entry { kind, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() },
            );
        }
    }
    Ok(entries)
}
