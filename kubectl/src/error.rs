//! Why a command could not find out what it was asked (exit status 2). Each message says what
//! was wrong, where, and what to do; none is a stack trace.

use std::fmt::Write as _;

/// A command could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig.
    #[error(
        "cannot load the kubeconfig: {0}\n  hint: set KUBECONFIG or pass --kubeconfig FILE (and --context NAME)"
    )]
    Kubeconfig(String),
    /// The API server did not answer.
    #[error(
        "cannot reach the API server at {url}: {cause}\n  hint: is the cluster up, and is `{context}` the context you meant? (kubectl config current-context)"
    )]
    Unreachable {
        /// Its URL.
        url: String,
        /// The kubeconfig context.
        context: String,
        /// The innermost cause, with the chain.
        cause: String,
    },
    /// The API server refused a read this command needs.
    #[error("the API server refused to {what}: {message}\n  hint: {hint}")]
    Refused {
        /// What was tried.
        what: String,
        /// What the API server said.
        message: String,
        /// What to do.
        hint: String,
    },
    /// Another API error.
    #[error("{what}: {cause}")]
    Api {
        /// What was tried.
        what: String,
        /// The error, with its chain.
        cause: String,
    },
    /// A sidecar's or the operator's diagnostics could not be read.
    #[error("{what}: {why}\n  hint: {hint}")]
    Diagnostics {
        /// What was tried.
        what: String,
        /// Why it failed.
        why: String,
        /// What to do.
        hint: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An API error while doing `what`, its message made for a person.
    pub fn api(what: impl Into<String>, e: kube::Error) -> Error {
        let what = what.into();
        match &e {
            kube::Error::Api(status) if status.code == 401 || status.code == 403 => Error::Refused {
                hint: if status.code == 401 {
                    "your credentials were not accepted; log in again or check the kubeconfig user".into()
                } else {
                    "ask for read access to it (kubectl auth can-i … tells what you may do)".into()
                },
                message: status.message.clone(),
                what,
            },
            _ => Error::Api { what, cause: chain(&e) },
        }
    }
}

/// An error and its sources, outermost first: `a: b: c`, without repeats.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        next = s.source();
    }
    out
}
