//! The current configuration, published atomically, and where it comes from: the local file
//! ([`watch_file`]), the operator's stream or the copy kept on disk ([`stream`]).
//!
//! The request path calls [`Store::load`] — an `ArcSwap` read, no lock — and keeps the
//! snapshot it got for the whole request, so a reload mid-request never mixes two
//! configurations. A reload compiles the new file (or decodes the new snapshot) completely
//! before swapping; one that fails validation is reported (log,
//! `breakwater_config_reloads_total{result="failure"}`, `/config`) and never replaces the
//! running configuration.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use breakwater_crds::snapshot::SnapshotVersion;

pub mod stream;
mod watch;

pub use self::watch::watch_file;
use crate::{
    config::{self, Config, ConfigError},
    metrics::Metrics,
    proxy::Routes,
    telemetry::sampling,
};

/// Where a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The local file (local mode), or the settings a cluster-mode sidecar starts with.
    File,
    /// The operator's stream.
    Stream,
    /// The last good snapshot kept on disk (a restart while the operator was away).
    Disk,
}

impl Source {
    /// `file`, `stream` or `disk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Stream => "stream",
            Self::Disk => "disk",
        }
    }
}

/// One published configuration.
#[derive(Debug)]
pub struct Published {
    /// Increments with every successful reload, from 1.
    pub version: u64,
    /// Where its snapshot came from.
    pub source: Source,
    /// When it was applied (Unix seconds).
    pub received_at_unix: u64,
    /// The configuration.
    pub config: Arc<Config>,
    /// The routing table and runtime state built from it.
    pub routes: Routes,
    /// The text it was compiled from (for change detection).
    source_hash: u64,
}

/// The last reload failure, shown on `/config`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadError {
    /// When it happened (Unix seconds).
    pub at_unix: u64,
    /// Every problem.
    pub problems: Vec<String>,
}

/// The holder of the current configuration.
#[derive(Debug)]
pub struct Store {
    current: ArcSwap<Published>,
    last_error: ArcSwap<Option<ReloadError>>,
    metrics: Arc<Metrics>,
    /// Which requests get spans; `None`: tracing is off. Set once, when tracing starts.
    sampling: Option<sampling::Policy>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Settings that can never take effect are worth a line in the log, not a refusal.
fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(warning = %w, "a policy setting can never take effect");
    }
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Store {
    /// Compiles `text` into the first configuration.
    pub fn new(text: &str, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let config = config::compile(text)?;
        log_warnings(&config);
        let routes = Routes::build(&config, None, &metrics);
        let published = Published {
            version: 1,
            source: Source::File,
            received_at_unix: unix_now(),
            config: Arc::new(config),
            routes,
            source_hash: hash(text),
        };
        Ok(Self {
            current: ArcSwap::from_pointee(published),
            last_error: ArcSwap::from_pointee(None),
            metrics,
            sampling: None,
        })
    }

    /// The store of a sidecar that records requests as `sampling` decides.
    pub fn with_sampling(self, sampling: Option<sampling::Policy>) -> Self {
        Self { sampling, ..self }
    }

    /// Which requests get spans (`None`: tracing is off).
    pub fn sampling(&self) -> Option<&sampling::Policy> {
        self.sampling.as_ref()
    }

    /// The current configuration.
    pub fn load(&self) -> Arc<Published> {
        self.current.load_full()
    }

    /// The last reload error, if the last reload failed.
    pub fn last_error(&self) -> Option<ReloadError> {
        (**self.last_error.load()).clone()
    }

    /// Metrics shared with the request path.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Compiles `text` and publishes it if valid. An unchanged text is a no-op (`Ok(false)`).
    /// On error the running configuration stays and the error is recorded.
    pub fn reload(&self, text: &str) -> Result<bool, ConfigError> {
        let current = self.current.load();
        let h = hash(text);
        if h == current.source_hash {
            return Ok(false);
        }
        match config::compile(text) {
            Ok(config) => {
                log_warnings(&config);
                self.publish(&current, config, h, Source::File);
                Ok(true)
            }
            Err(e) => Err(self.reject(e)),
        }
    }

    /// Applies a snapshot in its wire form (JSON) — what the operator sends — keeping this
    /// sidecar's own settings (listeners, limits, telemetry, application address). Fields this
    /// build does not know are ignored and counted; a snapshot of another schema, or with a
    /// bad value, is refused and recorded, and the running configuration stays. A snapshot with
    /// the content already running is a no-op (`Ok(false)`).
    pub fn apply_snapshot(&self, bytes: &[u8]) -> Result<bool, ConfigError> {
        self.apply_snapshot_from(bytes, Source::Stream).map(|(_, changed)| changed).map_err(|(_, e)| e)
    }

    /// [`Store::apply_snapshot`] from `source`, returning the version applied (and whether
    /// anything changed), or the version refused (when the snapshot names one) and why.
    #[allow(clippy::result_large_err)] // the error is built once per refused snapshot
    pub fn apply_snapshot_from(
        &self,
        bytes: &[u8],
        source: Source,
    ) -> Result<(SnapshotVersion, bool), (Option<SnapshotVersion>, ConfigError)> {
        let decoded = match breakwater_crds::snapshot::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                let version = stream::version_of(bytes);
                return Err((
                    version,
                    self.reject(ConfigError { problems: vec![format!("snapshot refused: {e}")] }),
                ));
            }
        };
        if !decoded.unknown_fields.is_empty() {
            self.metrics.snapshot_unknown_fields(decoded.unknown_fields.len());
            tracing::info!(fields = %decoded.unknown_fields.join(", "), "snapshot fields unknown to this sidecar ignored");
        }
        let current = self.current.load();
        let snapshot = decoded.snapshot;
        let version = snapshot.version.clone();
        if snapshot.content_hash() == current.config.snapshot.content_hash() {
            if current.source != source || current.config.snapshot.version != version {
                // The same content under a new name or from a new source (a reconnect after a
                // start from disk, a restarted operator): what `/config` says is refreshed; the
                // routes rebuild keeps every breaker's and budget's state, as nothing changed.
                let config = Config { snapshot, ..Config::clone(&current.config) };
                self.publish(&current, config, current.source_hash, source);
            }
            return Ok((version, false));
        }
        let config = Config { snapshot, ..Config::clone(&current.config) };
        let mut conflicts = config.conflicts();
        conflicts.extend(crate::proxy::http_route::check(&config.snapshot));
        if !conflicts.is_empty() {
            return Err((Some(version), self.reject(ConfigError { problems: conflicts })));
        }
        let h = current.source_hash;
        self.publish(&current, config, h, source);
        Ok((version, true))
    }

    fn publish(&self, current: &Published, config: Config, source_hash: u64, source: Source) {
        let routes = Routes::build(&config, Some(&current.routes), &self.metrics);
        let version = current.version + 1;
        let snapshot = config.snapshot.version.to_string();
        self.current.store(Arc::new(Published {
            version,
            source,
            received_at_unix: unix_now(),
            config: Arc::new(config),
            routes,
            source_hash,
        }));
        self.last_error.store(Arc::new(None));
        self.metrics.config_reload(true);
        tracing::info!(version, %snapshot, ?source, "configuration reloaded");
    }

    fn reject(&self, e: ConfigError) -> ConfigError {
        let at_unix = unix_now();
        self.last_error.store(Arc::new(Some(ReloadError { at_unix, problems: e.problems.clone() })));
        self.metrics.config_reload(false);
        tracing::error!(problems = %e.problems.join("; "), "configuration rejected; keeping the running one");
        e
    }
}
