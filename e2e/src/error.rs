//! The one error type of the harness. Messages say what failed and, where the environment is the
//! cause (no Go, not root, no iptables), what to install or run.

use std::{path::PathBuf, process::ExitStatus};

/// `Result` with the harness's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while starting or driving a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment lacks something the harness needs; never a silent skip.
    #[error("the e2e harness cannot run here: {0}")]
    Environment(String),

    /// Building the control-plane binaries failed.
    #[error("building the control-plane binaries failed ({status}); output:\n{output}")]
    Build {
        /// Exit status of `gobuild/build.sh`.
        status: ExitStatus,
        /// The end of its output.
        output: String,
    },

    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// An external command (ip, iptables, helm) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (and stdout).
        stderr: String,
    },

    /// A control-plane process exited while it should be running.
    #[error("{name} exited ({status}); the end of its log {log}:\n{tail}")]
    Exited {
        /// Which process.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },

    /// A call to the API server failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },

    /// A condition did not hold before its deadline.
    #[error("timed out after {waited:?} waiting for {what}; last observation: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: std::time::Duration,
        /// The last value or error seen while polling.
        last: String,
    },

    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),

    /// A pod asks for something the harness's kubelet cannot do.
    #[error("pod {pod}: {reason}")]
    Pod {
        /// `namespace/name`.
        pod: String,
        /// What is unsupported or wrong, e.g. an image with no binary in the image table.
        reason: String,
    },

    /// Any other invariant of the harness that did not hold.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An [`Error::Io`] with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// An [`Error::Kube`] with context.
    pub fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }
}
