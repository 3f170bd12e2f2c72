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

mod commands;
mod files;
mod namespace;
mod net;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, atomic::AtomicU32},
    time::Duration,
};

use kube::{Client, Config};
use tokio::{sync::OnceCell, task::JoinHandle};

use self::{commands::Ports, files::Files};
pub use self::{namespace::TestNamespace, net::free_port};
use crate::{
    Binaries, Error, PodRunner, Result,
    kubelet::ImageTable,
    network::HostNetwork,
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
        files::write(&dir.join("network"), &network.index().to_string())?;

        let files = Files::write(&dir, &network)?;
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

        let ports = Ports { etcd: free_port()?, etcd_peer: free_port()?, api: api_port };
        let spawn = |name: &str, command| Process::spawn(name, command, &logs, &pids);
        cluster.processes.push(spawn("etcd", commands::etcd(&binaries, &dir, &ports))?);
        cluster.processes.push(spawn(
            "kube-apiserver",
            commands::apiserver(&binaries, &dir, &ports, &files, &cluster.network),
        )?);

        files::write_kubeconfig(&cluster.kubeconfig, &server, &files.ca, &files.admin)?;
        cluster.config = files::load_config(&cluster.kubeconfig).await?;
        cluster.wait_ready().await?;
        let gateway = SocketAddr::new(IpAddr::V4(cluster.network.gateway()), api_port);
        cluster.forwarder = tokio::spawn(net::forward(gateway, api_port));

        let kubeconfig = dir.join("controller-manager.kubeconfig");
        files::write_kubeconfig(&kubeconfig, &server, &files.ca, &files.controller_manager)?;
        cluster.processes.push(spawn(
            "kube-controller-manager",
            commands::controller_manager(&binaries, &kubeconfig, &files),
        )?);
        let kubeconfig = dir.join("scheduler.kubeconfig");
        files::write_kubeconfig(&kubeconfig, &server, &files.ca, &files.scheduler)?;
        cluster.processes.push(spawn("kube-scheduler", commands::scheduler(&binaries, &kubeconfig))?);
        Ok(cluster)
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

    /// The kubelet of this cluster's single Node, started on first use.
    pub async fn pod_runner(&self) -> Result<&PodRunner> {
        self.pod_runner
            .get_or_try_init(|| async {
                let config = self.config.clone();
                let network = Arc::clone(&self.network);
                let pods_dir = self.dir.join("pods");
                let images = ImageTable::workspace();
                background()
                    .spawn(PodRunner::start(config, network, images, pods_dir))
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
