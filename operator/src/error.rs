//! The operator's one error type. Each variant has a metric label
//! (`breakwater_operator_reconcile_failures_total{error}`) and a message that says what to do.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CommunicationPolicy CRD is not installed.
    #[error(
        "the CommunicationPolicy CRD (communicationpolicies.breakwater.dev) is not installed: {0}. \
         Install Breakwater with its Helm chart (helm install breakwater charts/breakwater -n \
         breakwater-system --create-namespace), which installs the CRD, or apply \
         charts/breakwater/templates/crds/communicationpolicies.yaml rendered by `helm template`"
    )]
    CrdMissing(#[source] kube::Error),

    /// The operator may not read something it needs.
    #[error(
        "the operator's ServiceAccount may not {what}: {source}. The chart's ClusterRole grants \
         exactly what the operator needs; check that it is installed and bound"
    )]
    Forbidden {
        /// What was refused.
        what: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },

    /// An object without a namespace where one is required.
    #[error("{0} has no namespace")]
    MissingNamespace(String),

    /// Writing a policy's status failed.
    #[error("writing the status of CommunicationPolicy {policy}: {source}")]
    StatusWrite {
        /// `namespace/name`.
        policy: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },

    /// Another call to the API server failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },

    /// Leader election failed.
    #[error("leader election on Lease {lease}: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The error.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },

    /// A listener could not be opened.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Listen {
        /// What the listener serves.
        what: &'static str,
        /// Where.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The injection template cannot be used.
    #[error("the injection template (BREAKWATER_SIDECAR_CONFIG): {0}")]
    Template(String),

    /// The CA or serving certificate could not be made or read.
    #[error("the operator's certificates: {0}")]
    Certificate(String),

    /// No client configuration (neither in-cluster nor a kubeconfig).
    #[error(
        "no Kubernetes client configuration: {0}. In a pod the ServiceAccount token is used; \
         outside, set KUBECONFIG or --kubeconfig"
    )]
    ClientConfig(String),
}

impl Error {
    /// The `error` label of `breakwater_operator_reconcile_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::CrdMissing(_) => "crd_missing",
            Error::Forbidden { .. } => "forbidden",
            Error::MissingNamespace(_) => "missing_namespace",
            Error::StatusWrite { .. } => "status_write",
            Error::Kube { .. } => "kube",
            Error::Lease { .. } => "lease",
            Error::Listen { .. } => "listen",
            Error::ClientConfig(_) => "client_config",
            Error::Certificate(_) => "certificate",
            Error::Template(_) => "template",
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
