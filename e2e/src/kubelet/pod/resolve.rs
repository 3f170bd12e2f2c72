//! What each container will run: its image, command line, environment (the
//! kubelet's own variables first) and volumes, resolved once when the pod starts.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use k8s_openapi::api::core::v1::{Container, Service};
use kube::{Api, ResourceExt, api::ListParams};

use super::{Running, Worker};
use crate::kubelet::{container::Launch, volumes};

impl Worker {
    /// Resolves every container. `Err` is a failure worth retrying, as the kubelet retries volume
    /// setup: the environment or a volume could not be made yet (say the namespace's
    /// `kube-root-ca.crt` ConfigMap is still being published); every container then waits in
    /// `ContainerCreating` with the message. A container that can never run (unknown image, bad
    /// command) is recorded in `failure` instead.
    pub(super) async fn resolve(&mut self) -> Result<(), String> {
        self.init.clear();
        self.containers.clear();
        let prepared = async {
            let base = self.base_env().await?;
            let volumes = volumes::materialize(&self.ctx.client, &self.pod, &self.dir).await?;
            Ok::<_, String>((base, volumes))
        };
        let (base, volumes) = match prepared.await {
            Ok(prepared) => prepared,
            Err(e) => {
                self.placeholders("ContainerCreating", &e);
                return Err(e);
            }
        };
        let hosts = match self.hosts_file().await {
            Ok(path) => path,
            Err(e) => {
                self.placeholders("ContainerCreating", &e);
                return Err(e);
            }
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        for (init, list) in [(true, spec.init_containers.unwrap_or_default()), (false, spec.containers)] {
            for c in &list {
                match Launch::resolve(&self.ctx.client, &self.pod, c, &self.ctx.images, &base, &volumes).await
                {
                    Ok(mut launch) => {
                        launch.mounts.push(volumes::Mount {
                            source: hosts.clone(),
                            target: PathBuf::from("/etc/hosts"),
                            read_only: true,
                        });
                        let r = Running::new(launch);
                        if init { self.init.push(r) } else { self.containers.push(r) }
                    }
                    Err((reason, message)) => {
                        if self.failure.is_none() {
                            self.failure = Some((c.name.clone(), reason, message.clone()));
                        }
                        let r = placeholder(c, reason, &message);
                        if init { self.init.push(r) } else { self.containers.push(r) }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every container as waiting with `reason`.
    fn placeholders(&mut self, reason: &'static str, message: &str) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        self.init = spec.init_containers.iter().flatten().map(|c| placeholder(c, reason, message)).collect();
        self.containers = spec.containers.iter().map(|c| placeholder(c, reason, message)).collect();
    }

    /// The pod's `/etc/hosts`, standing in for cluster DNS (the harness has none): every
    /// Service with a cluster IP as `name.namespace.svc.cluster.local`, `name.namespace.svc`
    /// and `name.namespace`, plus `name` for the pod's own namespace, as a pod's resolver search
    /// path would find them; and the pod's own name, as the kubelet writes it. Taken when the
    /// pod starts: a Service created later is not in it (cluster DNS would find it).
    async fn hosts_file(&self) -> Result<PathBuf, String> {
        let own = self.pod.namespace().unwrap_or_default();
        let services = Api::<Service>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing Services for /etc/hosts: {e}"))?;
        let mut text = String::from(
            "# Written by the e2e kubelet (no cluster DNS here).\n127.0.0.1\tlocalhost\n::1\tlocalhost\n",
        );
        if let Some(ip) = self.netns.as_ref().map(|n| n.ip) {
            text += &format!("{ip}\t{}\n", self.pod.name_any());
        }
        for svc in &services.items {
            let Some(ip) = svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref())
                .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
            else {
                continue;
            };
            let (name, ns) = (svc.name_any(), svc.namespace().unwrap_or_default());
            text += &format!("{ip}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}");
            if ns == own {
                text += &format!(" {name}");
            }
            text += "\n";
        }
        let path = self.dir.join("hosts");
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The kubelet's own variables: `HOSTNAME`, the `kubernetes` Service, and service links for
    /// the Services of the pod's namespace.
    pub(super) async fn base_env(&self) -> Result<Vec<(String, String)>, String> {
        let mut env = vec![("HOSTNAME".to_owned(), self.pod.name_any())];
        let mut services: Vec<Service> = Vec::new();
        let default = Api::<Service>::namespaced(self.ctx.client.clone(), "default");
        if let Some(k) =
            default.get_opt("kubernetes").await.map_err(|e| format!("reading Service kubernetes: {e}"))?
        {
            services.push(k);
        }
        let links = self.pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
        if links {
            let namespace = self.pod.namespace().unwrap_or_default();
            let list = Api::<Service>::namespaced(self.ctx.client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing Services: {e}"))?;
            services.extend(
                list.items.into_iter().filter(|s| {
                    !(s.namespace().as_deref() == Some("default") && s.name_any() == "kubernetes")
                }),
            );
        }
        for svc in &services {
            let Some(spec) = &svc.spec else { continue };
            let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| ip.parse::<Ipv4Addr>().is_ok()) else {
                continue;
            };
            let prefix = svc.name_any().to_ascii_uppercase().replace('-', "_");
            let ports = spec.ports.clone().unwrap_or_default();
            env.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
            if let Some(first) = ports.first() {
                env.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
                let proto = first.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                env.push((format!("{prefix}_PORT"), format!("{proto}://{ip}:{}", first.port)));
            }
            for p in &ports {
                if let Some(name) = &p.name {
                    let name = name.to_ascii_uppercase().replace('-', "_");
                    env.push((format!("{prefix}_SERVICE_PORT_{name}"), p.port.to_string()));
                }
            }
        }
        Ok(env)
    }
}

/// A container that is not (yet) running, reported as waiting with `reason`.
fn placeholder(c: &Container, reason: &'static str, message: &str) -> Running {
    let mut r = Running::new(Launch {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        image_rootfs: PathBuf::new(),
        argv: Vec::new(),
        env: Vec::new(),
        working_dir: "/".into(),
        readiness: None,
        startup: None,
        ports: BTreeMap::new(),
        mounts: Vec::new(),
        security: Default::default(),
    });
    r.waiting = Some((reason, message.to_owned()));
    r
}
