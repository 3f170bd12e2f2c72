//! [`TestCluster`]: a real control plane on loopback, and a namespace per test.
//!
//! Processes: etcd (plain HTTP on loopback, `--unsafe-no-fsync`), kube-apiserver (TLS with
//! certificates from [`pki`](crate::pki), client-certificate auth, `--authorization-mode=Node,RBAC`,
//! the default admission plugins, which include the mutating and validating webhooks),
//! kube-controller-manager (namespaces finalize, ServiceAccounts and tokens exist, Deployments make
//! ReplicaSets and Pods, EndpointSlices follow Services) and kube-scheduler (Pods get a Node).
//!
//! The API server listens on 127.0.0.1; a forwarder in the harness serves the same port on the
//! bridge address 198.18.X.1 for pods, and that address is advertised, so the `kubernetes`
//! Service's endpoint is reachable from pod namespaces.
//!
//! **One cluster per test binary** ([`TestCluster::shared`]): starting one takes seconds, tests in
//! a binary run in parallel on their own runtimes, and a namespace per test keeps them apart.
//! Background work (the forwarder, the [`PodRunner`]) runs on a runtime of its own, because each
//! `#[tokio::test]` runtime ends with its test.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::{sync::OnceCell, task::JoinHandle};

use crate::{
    Binaries, Error, PodRunner, Result,
    kubelet::ImageTable,
    network::HostNetwork,
    pki::{self, Pki},
    process::{Process, STOP_GRACE},
    reaper::Reaper,
    wait,
};

/// How long the API server may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The runtime for work that outlives a single test: forwarders, the pod runner, cleanup.
pub(crate) fn background() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("breakwater-e2e")
            .enable_all()
            .build()
            .expect("the e2e background runtime builds")
    })
}

/// A running control plane; see the module docs.
pub struct TestCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    config: Config,
    server: String,
    /// Stopped in reverse order when the cluster is dropped.
    processes: Vec<Process>,
    /// Removed after the processes and pods (the pod runner holds the other reference).
    network: Arc<HostNetwork>,
    /// Serves the API server on the bridge address; aborted on drop.
    forwarder: JoinHandle<()>,
    binaries: Binaries,
    pod_runner: OnceCell<PodRunner>,
    namespaces: AtomicU32,
    /// Cleans up when the test process ends; `finish`ed on drop.
    reaper: Option<Reaper>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// The cluster of this test binary, started by the first test that asks.
    pub async fn shared() -> Result<&'static TestCluster> {
        static SHARED: OnceCell<Result<TestCluster, String>> = OnceCell::const_new();
        SHARED
            .get_or_init(|| async { TestCluster::start().await.map_err(|e| e.to_string()) })
            .await
            .as_ref()
            .map_err(|e| Error::Other(format!("the shared test cluster did not start: {e}")))
    }

    /// Starts a cluster owned by the caller; dropping it stops everything it started.
    pub async fn start() -> Result<TestCluster> {
        background()
            .spawn(Self::start_on_background())
            .await
            .map_err(|e| Error::Other(format!("starting the cluster panicked: {e}")))?
    }

    async fn start_on_background() -> Result<TestCluster> {
        crate::network::check_environment()?;
        let binaries = tokio::task::spawn_blocking(Binaries::ensure)
            .await
            .map_err(|e| Error::Other(format!("building the binaries panicked: {e}")))??;
        let dir = tempfile::Builder::new()
            .prefix("breakwater-e2e-")
            .tempdir()
            .map_err(Error::io("creating the cluster directory"))?
            .keep();
        let reaper = Reaper::spawn(&dir)?;
        let network = Arc::new(HostNetwork::create()?);
        write(&dir.join("network"), &network.index().to_string())?;

        let files = Files::write(&dir, &network)?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let pids = dir.join("pids");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(Error::io("creating the log directory"))?;

        let mut cluster = TestCluster {
            kubeconfig: dir.join("admin.kubeconfig"),
            config: Config::new(server.parse().expect("a loopback URL parses")),
            server: server.clone(),
            processes: Vec::new(),
            forwarder: tokio::spawn(async {}),
            binaries: binaries.clone(),
            pod_runner: OnceCell::new(),
            namespaces: AtomicU32::new(0),
            reaper: Some(reaper),
            network,
            dir: dir.clone(),
        };

        let mut etcd = Command::new(&binaries.etcd);
        etcd.args([
            "--name=e2e".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
            format!("--initial-cluster=e2e=http://127.0.0.1:{etcd_peer_port}"),
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ]);
        cluster.processes.push(Process::spawn("etcd", etcd, &logs, &pids)?);

        let gateway = cluster.network.gateway();
        let mut apiserver = Command::new(&binaries.kube_apiserver);
        apiserver.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            format!("--advertise-address={gateway}"),
            format!("--cert-dir={}", dir.join("apiserver").display()),
            format!("--tls-cert-file={}", files.serving_cert.display()),
            format!("--tls-private-key-file={}", files.serving_key.display()),
            format!("--client-ca-file={}", files.ca.display()),
            "--authorization-mode=Node,RBAC".to_owned(),
            format!("--service-cluster-ip-range={}", cluster.network.service_cidr()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", files.sa_pub.display()),
            format!("--service-account-signing-key-file={}", files.sa_key.display()),
            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
                .to_owned(),
            "--allow-privileged=true".to_owned(),
            "--enable-aggregator-routing=true".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ]);
        cluster.processes.push(Process::spawn("kube-apiserver", apiserver, &logs, &pids)?);

        cluster.write_kubeconfig(&cluster.kubeconfig, &files.ca, &files.admin)?;
        cluster.config = load_config(&cluster.kubeconfig).await?;
        cluster.wait_ready().await?;
        cluster.forwarder = tokio::spawn(forward(SocketAddr::new(IpAddr::V4(gateway), api_port), api_port));

        let kcm_kubeconfig = dir.join("controller-manager.kubeconfig");
        cluster.write_kubeconfig(&kcm_kubeconfig, &files.ca, &files.controller_manager)?;
        let mut kcm = Command::new(&binaries.kube_controller_manager);
        kcm.args([
            format!("--kubeconfig={}", kcm_kubeconfig.display()),
            "--leader-elect=false".to_owned(),
            // No HTTPS endpoint: nothing scrapes it, and readiness is judged by what it does.
            "--secure-port=0".to_owned(),
            format!("--service-account-private-key-file={}", files.sa_key.display()),
            format!("--root-ca-file={}", files.ca.display()),
            "--use-service-account-credentials=true".to_owned(),
            "--controllers=*".to_owned(),
            "--v=1".to_owned(),
        ]);
        cluster.processes.push(Process::spawn("kube-controller-manager", kcm, &logs, &pids)?);

        let scheduler_kubeconfig = dir.join("scheduler.kubeconfig");
        cluster.write_kubeconfig(&scheduler_kubeconfig, &files.ca, &files.scheduler)?;
        let mut scheduler = Command::new(&binaries.kube_scheduler);
        scheduler.args([
            format!("--kubeconfig={}", scheduler_kubeconfig.display()),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            "--v=1".to_owned(),
        ]);
        cluster.processes.push(Process::spawn("kube-scheduler", scheduler, &logs, &pids)?);
        Ok(cluster)
    }

    fn write_kubeconfig(&self, path: &Path, ca: &Path, user: &(PathBuf, PathBuf)) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: e2e\n  user:\n    client-certificate: {cert}\n    \
             client-key: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\n    \
             namespace: default\ncurrent-context: e2e\n",
            server = self.server,
            ca = ca.display(),
            cert = user.0.display(),
            key = user.1.display(),
        );
        write(path, &text)
    }

    /// Polls `/readyz` until the API server answers `ok`; fails at once if a process exits.
    async fn wait_ready(&mut self) -> Result<()> {
        let client = Client::try_from(self.config.clone()).map_err(Error::kube("building a client"))?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            let req = http::Request::get("/readyz").body(Vec::new()).expect("a static request builds");
            let last = match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 5s".into(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "kube-apiserver /readyz".into(),
                    waited: READY_TIMEOUT,
                    last,
                });
            }
            tokio::time::sleep(wait::POLL_INTERVAL).await;
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The admin kubeconfig (user `breakwater-e2e-admin`, group `system:masters`), for `helm`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory with logs, certificates and kubeconfigs; removed at the end unless
    /// `BREAKWATER_E2E_KEEP=1`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod and service network.
    pub fn network(&self) -> &HostNetwork {
        &self.network
    }

    /// The control-plane binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new admin client, bound to the calling runtime.
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone()).map_err(Error::kube("building the admin client"))
    }

    /// A client that impersonates ServiceAccount `namespace/name`, with the groups the API server
    /// gives ServiceAccounts (what its token would be granted).
    pub fn client_as_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ]);
        Client::try_from(config).map_err(Error::kube("building an impersonating client"))
    }

    /// Creates a namespace `<prefix>-<n>` for one test, waits for its `default` ServiceAccount
    /// (Pods are refused without it), and deletes it when the returned guard is dropped.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        let client = self.client()?;
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("breakwater.dev/e2e".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(Error::kube(format!("creating namespace {name}")))?;
        let guard = TestNamespace { name: name.clone(), config: self.config.clone() };
        let sas = Api::<ServiceAccount>::namespaced(client, &name);
        wait::until(format!("ServiceAccount {name}/default"), Duration::from_secs(60), || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.map(|sa| sa.map(drop)) }
        })
        .await?;
        Ok(guard)
    }

    /// The kubelet of this cluster's single Node, started on first use.
    pub async fn pod_runner(&self) -> Result<&PodRunner> {
        self.pod_runner
            .get_or_try_init(|| async {
                let config = self.config.clone();
                let network = Arc::clone(&self.network);
                let pods_dir = self.dir.join("pods");
                let mount_record = self.dir.join("mountpoints");
                let images = ImageTable::workspace();
                background()
                    .spawn(PodRunner::start(config, network, images, pods_dir, mount_record))
                    .await
                    .map_err(|e| Error::Other(format!("starting the pod runner panicked: {e}")))?
            })
            .await
    }

    /// Checks that every control-plane process still runs.
    pub fn check_running(&mut self) -> Result<()> {
        self.processes.iter_mut().try_for_each(Process::check_running)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(runner) = self.pod_runner.take() {
            runner.stop();
        }
        self.forwarder.abort();
        while let Some(mut p) = self.processes.pop() {
            p.stop(STOP_GRACE);
        }
        if let Some(reaper) = self.reaper.take() {
            reaper.finish();
        }
    }
}

/// A namespace for one test, deleted (in the background) when dropped.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    config: Config,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, config) = (self.name.clone(), self.config.clone());
        // Not awaited: the namespace controller and the pod runner finish the job; the reaper
        // removes whatever is left when the binary exits.
        background().spawn(async move {
            if let Ok(client) = Client::try_from(config) {
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
            }
        });
    }
}

/// Certificate and key files of a cluster.
struct Files {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    admin: (PathBuf, PathBuf),
    controller_manager: (PathBuf, PathBuf),
    scheduler: (PathBuf, PathBuf),
}

impl Files {
    fn write(dir: &Path, network: &HostNetwork) -> Result<Self> {
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(Error::io("creating the pki directory"))?;
        let pki = Pki::new()?;
        let ca = pki_dir.join("ca.crt");
        write(&ca, &pki.ca_pem())?;
        let kubernetes_ip = first_service_ip(network);
        let serving = pki.serving(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(network.gateway()), IpAddr::V4(kubernetes_ip)],
        )?;
        let pair = |name: &str, ck: pki::CertKey| -> Result<(PathBuf, PathBuf)> {
            let (cert, key) = (pki_dir.join(format!("{name}.crt")), pki_dir.join(format!("{name}.key")));
            write(&cert, &ck.cert_pem)?;
            write(&key, &ck.key_pem)?;
            Ok((cert, key))
        };
        let (serving_cert, serving_key) = pair("apiserver", serving)?;
        let (sa_key, sa_pub) = (pki_dir.join("service-account.key"), pki_dir.join("service-account.pub"));
        let (private, public) = pki::service_account_key()?;
        write(&sa_key, &private)?;
        write(&sa_pub, &public)?;
        Ok(Files {
            ca,
            serving_cert,
            serving_key,
            sa_key,
            sa_pub,
            admin: pair("admin", pki.client("breakwater-e2e-admin", Some("system:masters"))?)?,
            controller_manager: pair(
                "controller-manager",
                pki.client("system:kube-controller-manager", None)?,
            )?,
            scheduler: pair("scheduler", pki.client("system:kube-scheduler", None)?)?,
        })
    }
}

/// The `kubernetes` Service's cluster IP: the first address of the range.
fn first_service_ip(network: &HostNetwork) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, network.index(), 1)
}

async fn load_config(kubeconfig: &Path) -> Result<Config> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Other(format!("reading {}: {e}", kubeconfig.display())))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Other(format!("loading {}: {e}", kubeconfig.display())))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

/// A port free on 127.0.0.1 right now (the kernel's choice; it could be taken before use, the
/// same race envtest accepts).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("finding a free port"))?;
    Ok(listener.local_addr().map_err(Error::io("reading a bound address"))?.port())
}

/// Forwards connections on `listen` to the API server on 127.0.0.1:`port`.
async fn forward(listen: SocketAddr, port: u16) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot serve the API server on the bridge address");
            return;
        }
    };
    loop {
        let mut inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting on the bridge address failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
