//! The cluster a command reads, chosen as kubectl chooses it, and asked once whether it answers
//! so that every later error is about the question, not the connection.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{Error, args::ClusterArgs, error::chain};

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The API server's URL, for messages.
    pub url: String,
    /// The kubeconfig context (`in-cluster` inside a pod).
    pub context: String,
    /// The context's namespace, else `default`.
    pub namespace: String,
    /// The API server's version, `major.minor`, as numbers.
    pub version: (u32, u32),
    /// Its full version string (`v1.37.2`).
    pub git_version: String,
}

/// Connects as `args` say and asks the API server its version.
pub async fn connect(args: &ClusterArgs) -> Result<Cluster, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: args.cluster.clone(),
        user: args.user.clone(),
    };
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Some(
            Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {}", path.display(), chain(&e))))?,
        ),
        // $KUBECONFIG (a list of files, merged) or ~/.kube/config; none: in a pod, its account.
        None => match Kubeconfig::read() {
            Ok(kc) => Some(kc),
            Err(e) if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) => {
                return Err(Error::Kubeconfig(format!("$KUBECONFIG: {}", chain(&e))));
            }
            Err(_) => None,
        },
    };
    let (config, context) = match kubeconfig {
        Some(kc) => {
            let context = options.context.clone().or_else(|| kc.current_context.clone()).unwrap_or_default();
            let config = Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Error::Kubeconfig(chain(&e)))?;
            (config, context)
        }
        None => (
            Config::incluster().map_err(|e| {
                Error::Kubeconfig(format!("no kubeconfig file found, and not inside a pod ({})", chain(&e)))
            })?,
            "in-cluster".to_owned(),
        ),
    };
    let url = config.cluster_url.to_string();
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(chain(&e)))?;
    let info = client.apiserver_version().await.map_err(|e| match e {
        kube::Error::Api(_) => Error::api(format!("asking the API server at {url} for its version"), e),
        e => Error::Unreachable { url: url.clone(), context: context.clone(), cause: chain(&e) },
    })?;
    let number = |s: &str| s.trim_end_matches('+').parse().unwrap_or(0);
    Ok(Cluster {
        client,
        url,
        context,
        namespace,
        version: (number(&info.major), number(&info.minor)),
        git_version: info.git_version,
    })
}
