//! The images `make images` builds (`target/images/*.oci.tar`, by `images/build.sh`), checked as
//! a cluster would meet them and as a user would build and publish them:
//!
//! - each is minimal and labelled: a static entrypoint, no shell or package manager, the chart's
//!   non-root user, the release's version and the commit in its labels; the sidecar's compressed
//!   size within its 15 MB goal;
//! - the sidecar image's own `init` (and the iptables it carries) programs a network namespace this
//!   test creates, from the image's root filesystem;
//! - one commit gives one digest (two builds, compared);
//! - the Dockerfile's image stages, built with Buildah (no daemon), hold the same files and the same
//!   configuration;
//! - `images/push.sh` (what `make push` runs) copies them to a real registry (crane's) with their
//!   digests unchanged, and `helm template --set imageRegistry=…` renders exactly those references.
//!
//! Needs root (unpacking keeps owners; network namespaces) and what `make image-test-tools`
//! installs. `make test` builds the images first.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use breakwater_e2e::{
    Helm,
    bins::workspace_root,
    helm::chart_dir,
    oci::{Archive, Kind, images_dir, tree},
};
use serde_json::Value;
use tempfile::TempDir;

/// An image `make images` builds: its name, entrypoint, user and title.
struct Image {
    name: &'static str,
    entrypoint: &'static str,
    user: &'static str,
    title: &'static str,
}

const IMAGES: [Image; 4] = [
    Image {
        name: "sidecar",
        entrypoint: "/usr/local/bin/breakwater-sidecar",
        user: "2102:2102",
        title: "Breakwater sidecar",
    },
    Image {
        name: "operator",
        entrypoint: "/usr/local/bin/breakwater-operator",
        user: "65532:65532",
        title: "Breakwater operator",
    },
    Image {
        name: "fault-server",
        entrypoint: "/usr/local/bin/breakwater-fault",
        user: "65532:65532",
        title: "Breakwater fault server",
    },
    Image {
        name: "e2e-client",
        entrypoint: "/usr/local/bin/breakwater-e2e-client",
        user: "65532:65532",
        title: "Breakwater e2e client",
    },
];

/// The sidecar's compressed size goal.
const SIDECAR_MAX_BYTES: u64 = 15_000_000;

/// Runs a command to completion; its stdout, or a panic quoting everything it printed.
fn run(command: &mut Command) -> String {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp(prefix: &str) -> TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("a temporary directory")
}

/// `appVersion` of the chart: the version the images are tagged and labelled with.
fn app_version() -> String {
    let chart = fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml");
    let line = chart.lines().find_map(|l| l.strip_prefix("appVersion:")).expect("Chart.yaml has appVersion");
    line.trim().trim_matches('"').to_owned()
}

fn git(args: &[&str]) -> String {
    run(Command::new("git").arg("-C").arg(workspace_root()).args(args)).trim().to_owned()
}

fn labels(config: &Value) -> &serde_json::Map<String, Value> {
    config["config"]["Labels"].as_object().expect("the image config has labels")
}

/// An image's root filesystem, unpacked into a temporary directory.
fn unpack(archive: &Archive) -> (TempDir, PathBuf) {
    let dir = temp("bw-rootfs-");
    let rootfs = dir.path().join("rootfs");
    archive.unpack(&rootfs).unwrap_or_else(|e| panic!("{e}"));
    (dir, rootfs)
}

#[test]
fn each_image_is_static_minimal_non_root_and_labelled() {
    let version = app_version();
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "the chart's appVersion is the workspace's version");
    let head = git(&["rev-parse", "HEAD"]);
    let repository = fs::read_to_string(workspace_root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("repository = ").map(|r| r.trim_matches('"').to_owned()))
        .expect("the workspace names its repository");

    for image in &IMAGES {
        let archive = Archive::built(image.name).unwrap_or_else(|e| panic!("{e}"));
        let config = archive.config();
        let what = format!("{} ({})", image.name, archive.path().display());
        println!(
            "{:<13} {} compressed {:>10} bytes",
            image.name,
            archive.digest(),
            archive.compressed_size()
        );

        assert_eq!(archive.reference(), version, "{what}: tagged with the release's version");
        assert_eq!(config["os"], "linux", "{what}");
        assert_eq!(config["architecture"], "amd64", "{what}");
        assert_eq!(config["config"]["User"], image.user, "{what}: runs as the chart's non-root user");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!([image.entrypoint]), "{what}");
        assert_eq!(config["config"]["WorkingDir"], "/", "{what}");
        let labels = labels(config);
        let label = |key: &str| labels.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        assert_eq!(label("org.opencontainers.image.title"), image.title, "{what}");
        assert_eq!(label("org.opencontainers.image.version"), version, "{what}");
        assert_eq!(label("org.opencontainers.image.source"), repository, "{what}");
        let revision = label("org.opencontainers.image.revision");
        assert!(
            revision == head || revision == format!("{head}-dirty"),
            "{what}: revision label {revision:?} is not this commit ({head}); run `make images`"
        );
        assert_eq!(
            label("org.opencontainers.image.created"),
            config["created"].as_str().unwrap_or_default(),
            "{what}"
        );
        assert_eq!(archive.manifest()["layers"].as_array().map(Vec::len), Some(1), "{what}: one layer");

        let (_dir, rootfs) = unpack(&archive);
        let files = tree(&rootfs).unwrap_or_else(|e| panic!("{e}"));
        for forbidden in
            ["bin/sh", "usr/bin/sh", "bin/bash", "bin/busybox", "usr/bin/apt", "usr/bin/dpkg", "sbin/apk"]
        {
            assert!(
                !files.contains_key(Path::new(forbidden)),
                "{what}: /{forbidden} must not be in the image"
            );
        }
        assert!(
            !files.keys().any(|p| p.starts_with("etc/ssl") || p.starts_with("usr/share/ca-certificates")),
            "{what}: no CA certificates (no binary verifies a public TLS peer)"
        );
        for (path, entry) in &files {
            assert_eq!(
                (entry.uid, entry.gid),
                (0, 0),
                "{what}: /{} owned by root, not writable by the user",
                path.display()
            );
            // (A symlink's own mode is always 0777 and means nothing.)
            if !matches!(entry.kind, Kind::Symlink(_)) {
                assert_eq!(entry.mode & 0o022, 0, "{what}: /{} is group/world-writable", path.display());
            }
        }
        let entrypoint = rootfs.join(image.entrypoint.trim_start_matches('/'));
        let described = run(Command::new("file").arg("-b").arg(&entrypoint));
        assert!(
            described.contains("ELF 64-bit") && described.contains("static"),
            "{what}: entrypoint is {described}"
        );
        assert!(matches!(files[Path::new(image.entrypoint.trim_start_matches('/'))].kind, Kind::File { .. }));
        // Only the sidecar carries more than its binary: iptables for `init`.
        if image.name != "sidecar" {
            let regular: Vec<_> =
                files.iter().filter(|(_, e)| matches!(e.kind, Kind::File { .. })).map(|(p, _)| p).collect();
            assert_eq!(
                regular,
                [Path::new(image.entrypoint.trim_start_matches('/'))],
                "{what}: only its binary"
            );
        } else {
            assert!(
                archive.compressed_size() <= SIDECAR_MAX_BYTES,
                "{what}: {} bytes compressed, the goal is ≤ {SIDECAR_MAX_BYTES}",
                archive.compressed_size()
            );
        }
    }
}

/// A network namespace this test owns, deleted (by name) when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Self {
        let name = format!("bwimg{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run(Command::new("ip").args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]));
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[test]
fn the_sidecar_image_programs_a_pod_network_with_its_own_init_and_iptables() {
    let archive = Archive::built("sidecar").unwrap_or_else(|e| panic!("{e}"));
    let (_dir, rootfs) = unpack(&archive);
    // What a runtime provides in a container: /dev, /proc and a /run (the image has none).
    for dir in ["dev", "proc", "run", "tmp"] {
        fs::create_dir_all(rootfs.join(dir)).expect("mount point");
    }
    let netns = Netns::create();
    // In the namespace's network and a private mount namespace: the image's root, the image's
    // binaries (chroot), as the init container runs it (root, NET_ADMIN).
    let script = r#"set -e
root=$1; shift
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
exec chroot "$root" "$@""#;
    let in_image = |args: &[&str]| {
        run(Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.0,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&rootfs)
            .args(args))
    };

    let version = in_image(&["/usr/sbin/iptables-restore", "--version"]);
    assert!(version.contains("nf_tables"), "the image's iptables-restore uses nft: {version}");
    let installed = in_image(&["/usr/local/bin/breakwater-sidecar", "init", "--log-format", "text"]);
    println!("init:\n{installed}");
    // Read with the host's iptables: the rules are really in the namespace's kernel tables.
    for save in ["iptables-save", "ip6tables-save"] {
        let rules = run(Command::new("ip").args(["netns", "exec", &netns.0, save, "-t", "nat"]));
        assert!(
            rules.contains("REDIRECT --to-ports 15001") && rules.contains("REDIRECT --to-ports 15006"),
            "{save} after the image's init:\n{rules}"
        );
        assert!(rules.contains("--uid-owner 2102"), "the proxy's own uid is exempt:\n{rules}");
    }
    // Idempotent, from the image too: a second run changes nothing.
    let before = run(Command::new("ip").args(["netns", "exec", &netns.0, "iptables-save", "-t", "nat"]));
    in_image(&["/usr/local/bin/breakwater-sidecar", "init", "--log-format", "text"]);
    let after = run(Command::new("ip").args(["netns", "exec", &netns.0, "iptables-save", "-t", "nat"]));
    let rules = |s: &str| s.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(rules(&before), rules(&after), "a second init changed the rules");
    // The image's iptables-save reads what init wrote.
    let saved = in_image(&["/usr/sbin/iptables-save", "-t", "nat"]);
    assert_eq!(rules(&saved), rules(&after), "the image's iptables-save and the host's agree");
}

/// Builds the images from the already built binaries into `out`, with a fixed revision and time.
fn build_images(out: &Path, extra: &[&str]) {
    let bins = workspace_root().join("target/x86_64-unknown-linux-musl/dist");
    run(Command::new(workspace_root().join("images/build.sh"))
        .args(extra)
        .arg(&bins)
        .arg(out)
        .env("REVISION", "0123456789abcdef0123456789abcdef01234567")
        .env("SOURCE_DATE_EPOCH", "1767225600"));
}

#[test]
fn one_commit_gives_one_digest() {
    let (first, second) = (temp("bw-images-a-"), temp("bw-images-b-"));
    build_images(first.path(), &[]);
    build_images(second.path(), &[]);
    for image in &IMAGES {
        let digest = |dir: &TempDir| {
            fs::read_to_string(dir.path().join(format!("{}.digest", image.name))).expect("digest")
        };
        let (a, b) = (digest(&first), digest(&second));
        assert!(a.starts_with("sha256:"), "{}: {a}", image.name);
        assert_eq!(a, b, "{}: two builds of one commit differ", image.name);
        let archive =
            |dir: &TempDir| fs::read(dir.path().join(format!("{}.oci.tar", image.name))).expect("archive");
        assert!(archive(&first) == archive(&second), "{}: the archives differ byte for byte", image.name);
        // And the archive says what its .digest file says.
        let opened = Archive::open(&first.path().join(format!("{}.oci.tar", image.name)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(opened.digest(), a.trim());
        assert_eq!(opened.config()["created"], "2026-01-01T00:00:00Z");
    }
}

/// Buildah with private storage under a temporary directory (no daemon, no shared state).
struct Buildah {
    dir: TempDir,
}

impl Buildah {
    fn new() -> Self {
        Buildah { dir: temp("bw-buildah-") }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("buildah");
        command
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .args(["--storage-driver", "vfs"])
            .env("BUILDAH_ISOLATION", "chroot")
            .env("REGISTRIES_CONFIG_PATH", self.dir.path().join("registries.conf"));
        command
    }
}

#[test]
fn the_dockerfile_builds_the_same_images() {
    let dockerfile = fs::read_to_string(workspace_root().join("Dockerfile")).expect("Dockerfile");
    let marker = "# ---- image stages";
    let (build_stage, image_stages) =
        dockerfile.split_at(dockerfile.find(marker).expect("the Dockerfile marks its image stages"));
    // The build stage builds what `make images` builds and stages it with images/build.sh.
    let makefile = fs::read_to_string(workspace_root().join("Makefile")).expect("Makefile");
    for bin in ["breakwater-sidecar", "breakwater-operator", "breakwater-fault", "breakwater-e2e-client"] {
        assert!(build_stage.contains(&format!("--bin {bin}")), "the Dockerfile builds {bin}");
        assert!(makefile.contains(&format!("--bin {bin}")), "make images builds {bin}");
    }
    assert!(build_stage.contains("--profile dist --target x86_64-unknown-linux-musl"));
    assert!(build_stage.contains("images/build.sh --stage-only target/x86_64-unknown-linux-musl/dist /out"));

    // The Dockerfile's image stages on top of the staged root filesystems (the cargo build in its
    // build stage is the one `make images` ran; running it again here would take minutes).
    let context = temp("bw-docker-context-");
    build_images(&context.path().join("out"), &["--stage-only"]);
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM scratch AS build\nCOPY out/ /out/\n\n{image_stages}"),
    )
    .expect("Dockerfile");
    let reference = Archive::built("sidecar").unwrap_or_else(|e| panic!("{e}"));
    let labels_of = |a: &Archive| labels(a.config()).clone();
    let made = labels_of(&reference);
    let arg = |key: &str| {
        format!(
            "{key}={}",
            made[&format!("org.opencontainers.image.{}", key.to_lowercase())]
                .as_str()
                .expect("make images sets the label")
        )
    };

    let buildah = Buildah::new();
    let built = temp("bw-docker-images-");
    for image in &IMAGES {
        let tag = format!("localhost/breakwater-test/{}:{}", image.name, app_version());
        run(buildah
            .command()
            .args(["build", "--quiet", "--timestamp", "1767225600", "--target", image.name])
            .args([
                "--build-arg",
                &arg("VERSION"),
                "--build-arg",
                &arg("REVISION"),
                "--build-arg",
                &arg("CREATED"),
            ])
            .args(["-f", "Dockerfile", "-t", &tag, "."])
            .current_dir(context.path()));
        let archive_path = built.path().join(format!("{}.oci.tar", image.name));
        run(buildah.command().args(["push", "--quiet", &tag]).arg(format!(
            "oci-archive:{}:{}",
            archive_path.display(),
            app_version()
        )));
        let docker = Archive::open(&archive_path).unwrap_or_else(|e| panic!("{e}"));
        let make = Archive::built(image.name).unwrap_or_else(|e| panic!("{e}"));
        println!("{:<13} Dockerfile {} / make images {}", image.name, docker.digest(), make.digest());

        // Same configuration: what the runtime uses, and the labels (Buildah adds its version).
        for key in ["User", "Entrypoint", "Env", "WorkingDir", "Cmd"] {
            assert_eq!(
                docker.config()["config"][key],
                make.config()["config"][key],
                "{}: config.{key}",
                image.name
            );
        }
        let mut docker_labels = labels_of(&docker);
        docker_labels.remove("io.buildah.version");
        assert_eq!(docker_labels, labels_of(&make), "{}: labels", image.name);
        assert_eq!(
            (&docker.config()["os"], &docker.config()["architecture"]),
            (&make.config()["os"], &make.config()["architecture"])
        );

        // Same files: paths, types, contents, modes, owners.
        let (_a, docker_root) = unpack(&docker);
        let (_b, make_root) = unpack(&make);
        let (docker_tree, make_tree) =
            (tree(&docker_root).expect("Dockerfile image"), tree(&make_root).expect("make images image"));
        let differing: Vec<_> = docker_tree
            .keys()
            .chain(make_tree.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|p| docker_tree.get(*p) != make_tree.get(*p))
            .map(|p| {
                format!(
                    "/{}: Dockerfile {:?}, make images {:?}",
                    p.display(),
                    docker_tree.get(p),
                    make_tree.get(p)
                )
            })
            .collect();
        assert!(differing.is_empty(), "{}: the images' files differ:\n{}", image.name, differing.join("\n"));
        assert!(make_tree.len() > 3, "{}: compared {} entries", image.name, make_tree.len());
    }
}

/// crane's registry (go-containerregistry), in memory on a free loopback port; killed when dropped.
struct Registry {
    child: Child,
    address: String,
}

impl Registry {
    fn start() -> Self {
        let crane = breakwater_e2e::bins::gobuild_path("crane/build.sh", "image-test-tools").expect("crane");
        let mut child = Command::new(crane)
            .args(["registry", "serve", "--address", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("crane registry serve (make image-test-tools builds crane)");
        // It says "serving on port N" once it listens; a thread reads its output (and keeps
        // draining it) so that the wait has a deadline.
        let stderr = BufReader::new(child.stderr.take().expect("piped"));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(port) = line.split("serving on port ").nth(1) {
                    let _ = port_tx.send(port.trim().to_owned());
                }
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("crane did not say which port it serves on within 20 s: {e}")
        });
        Registry { child, address: format!("127.0.0.1:{port}") }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn make_push_publishes_what_the_chart_pulls() {
    let registry = Registry::start();
    let prefix = format!("{}/team", registry.address);
    let version = app_version();
    let pushed = run(Command::new(workspace_root().join("images/push.sh"))
        .args([prefix.as_str(), version.as_str()])
        .arg(images_dir())
        .args(["operator", "sidecar"])
        .env("SKOPEO_FLAGS", "--dest-tls-verify=false"));
    println!("{pushed}");

    // What the registry serves is what was built: same digests.
    let mut published = BTreeSet::new();
    for name in ["operator", "sidecar"] {
        let reference = format!("{prefix}/breakwater/{name}:{version}");
        let inspected = run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ]));
        let inspected: Value = serde_json::from_str(&inspected).expect("skopeo inspect prints JSON");
        let built = Archive::built(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            inspected["Digest"],
            built.digest(),
            "{reference}: the registry's digest is the built one"
        );
        assert_eq!(inspected["Labels"]["org.opencontainers.image.version"], version.as_str());
        published.insert(reference);
    }

    // The chart, pointed at that registry, pulls exactly those references (tag defaulting to its
    // appVersion): the operator's Deployment and the sidecar the webhook injects.
    let helm = Helm::offline().unwrap_or_else(|e| panic!("{e}"));
    let rendered = helm
        .run([
            "template",
            "bw",
            &chart_dir().display().to_string(),
            "--set",
            &format!("imageRegistry={prefix}"),
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let referenced: BTreeSet<String> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .map(|i| i.trim_matches('"').to_owned())
        .collect();
    assert_eq!(referenced, published, "the chart's images with imageRegistry={prefix}");

    // A bad REGISTRY is refused before anything is copied.
    let refused = Command::new(workspace_root().join("images/push.sh"))
        .args(["https://registry.example.com", version.as_str()])
        .arg(images_dir())
        .arg("sidecar")
        .output()
        .expect("push.sh");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a URL"));
}
