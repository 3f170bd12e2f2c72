//! The kubectl plugin as users install it: the archive `make plugin-archive` builds
//! (`target/plugin/kubectl-breakwater-linux-amd64.tar.gz`), described by the repository's krew
//! manifest (`.krew.yaml`, a krew-release-bot template, rendered here as the bot would for this
//! release), installed with the real krew (built from its Go module by `make krew`) into a
//! scratch `KREW_ROOT`; the real kubectl then finds `kubectl breakwater` on PATH and runs it.
//! No cluster: `lint` and `--version` need none.

use std::{path::Path, process::Command};

use breakwater_e2e::bins::{Binaries, gobuild_path, workspace_root};
use sha2::Digest;

const ARCHIVE: &str = "target/plugin/kubectl-breakwater-linux-amd64.tar.gz";

/// `.krew.yaml` rendered as krew-release-bot renders it for `tag`, with the archive's `sha256`:
/// `{{ .TagName }}` becomes the tag, `{{addURIAndSha "URL" .TagName }}` the `uri` and `sha256`.
fn render(template: &str, tag: &str, sha256: &str) -> String {
    let mut out = String::new();
    for line in template.lines() {
        let line = line.replace("{{ .TagName }}", tag);
        match line.split_once("{{addURIAndSha \"") {
            Some((indent, rest)) => {
                let url = rest.split('"').next().unwrap_or_default();
                out.push_str(&format!("{indent}uri: {url}\n{indent}sha256: {sha256}\n"));
            }
            None => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn tool(script: &str, make: &str) -> std::path::PathBuf {
    gobuild_path(script.trim_start_matches("e2e/gobuild/"), make).expect("a tool the test runs")
}

#[test]
fn krew_installs_the_release_archive_and_kubectl_runs_the_plugin() {
    let root = workspace_root();
    let archive = root.join(ARCHIVE);
    assert!(archive.is_file(), "{} is missing: run `make plugin-archive`", archive.display());
    let bytes = std::fs::read(&archive).expect("the archive is readable");
    let sha256: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let beside = std::fs::read_to_string(root.join(format!("{ARCHIVE}.sha256"))).expect("its .sha256");
    assert!(beside.starts_with(&sha256), "the .sha256 beside the archive is its own: {beside}");

    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let template = std::fs::read_to_string(root.join(".krew.yaml")).expect(".krew.yaml");
    let manifest = render(&template, &tag, &sha256);
    assert!(!manifest.contains("{{"), "every template field is rendered:\n{manifest}");
    assert!(
        manifest.contains(&format!("releases/download/{tag}/kubectl-breakwater-linux-amd64.tar.gz")),
        "{manifest}"
    );

    let scratch = tempfile::tempdir().expect("a scratch directory");
    // krew takes the plugin's name from the file name.
    let file = scratch.path().join("breakwater.yaml");
    std::fs::write(&file, &manifest).expect("write the manifest");
    let krew_root = scratch.path().join("krew");
    let krew = tool("e2e/gobuild/krew/build.sh", "krew");
    let krew_cmd = |args: &[&str]| {
        let mut c = Command::new(&krew);
        c.args(args).env("KREW_ROOT", &krew_root).env("HOME", scratch.path()).env_remove("KUBECONFIG");
        c
    };
    let (ok, text) = run(krew_cmd(&[
        "install",
        &format!("--manifest={}", file.display()),
        &format!("--archive={}", archive.display()),
    ])
    .stdin(std::process::Stdio::null()));
    assert!(ok, "krew install:\n{text}\nmanifest:\n{manifest}");
    assert!(text.contains("Installed plugin: breakwater"), "{text}");
    // The caveats are shown on install.
    assert!(text.contains("get` on pods/proxy"), "{text}");
    // Its receipt, what `krew list` and `krew upgrade` read (`krew list` itself wants the
    // index, which lives on GitHub).
    let receipt =
        std::fs::read_to_string(krew_root.join("receipts/breakwater.yaml")).expect("krew's receipt");
    assert!(receipt.contains(&format!("version: {tag}")) && receipt.contains(&sha256), "{receipt}");

    // kubectl finds it on PATH (where krew puts its plugins), and runs it.
    let kubectl = Binaries::locate().kubectl;
    assert!(kubectl.is_file(), "{} is missing: run `make k8s-bins`", kubectl.display());
    let bin = krew_root.join("bin");
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let kubectl_cmd = |args: &[&str]| {
        let mut c = Command::new(&kubectl);
        c.args(args).env("PATH", &path).env("HOME", scratch.path()).env_remove("KUBECONFIG");
        c
    };
    let (ok, text) = run(&mut kubectl_cmd(&["plugin", "list"]));
    assert!(ok && text.contains(&bin.join("kubectl-breakwater").display().to_string()), "{text}");
    let (ok, text) = run(&mut kubectl_cmd(&["breakwater", "--version"]));
    assert!(ok && text.trim() == format!("kubectl breakwater {}", env!("CARGO_PKG_VERSION")), "{text}");
    let example = root.join("examples/checkout-to-payments.yaml");
    let (ok, text) = run(&mut kubectl_cmd(&["breakwater", "lint", &example.display().to_string()]));
    assert!(ok, "lint of an example needs no cluster:\n{text}");

    // What krew unpacked is the static binary and the LICENSE, nothing else.
    let store = krew_root.join("store/breakwater").join(&tag);
    let mut files: Vec<String> = std::fs::read_dir(&store)
        .expect("krew's store of the plugin")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["LICENSE", "kubectl-breakwater"]);
    let (_, kind) = run(Command::new("file").arg(Path::new(&store).join("kubectl-breakwater")));
    assert!(kind.contains("statically linked") || kind.contains("static-pie linked"), "{kind}");
}
