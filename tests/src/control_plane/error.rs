//! Why a control plane could not be started or used.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting or talking to a test control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The setup script was not sourced, so the tests do not know where the binaries are.
    #[error(
        "{variable} is not set: run the tests through tests/run-all, or `source tests/setup/10-control-plane.sh` first \
         (it builds kube-apiserver, kube-controller-manager and etcd and exports {variable})"
    )]
    MissingEnv {
        /// The variable that tests/setup/10-control-plane.sh exports.
        variable: &'static str,
    },
    /// The variable points somewhere without the expected program.
    #[error("{} is not an executable file: rerun tests/setup/10-control-plane.sh", path.display())]
    MissingBinary {
        /// Where the program was expected.
        path: PathBuf,
    },
    /// rcgen refused to make a key or certificate.
    #[error("cannot generate the control plane's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A file, directory, port or child process could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
    /// A control plane process stopped while the others still needed it.
    #[error("{name} exited ({status}); last lines of {}:\n{log_tail}", log.display())]
    ProcessExited {
        /// etcd, kube-apiserver or kube-controller-manager.
        name: &'static str,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The control plane did not become ready in time.
    #[error("{what} was not ready after {waited:?} (last answer: {last_answer}); last lines of {}:\n{log_tail}", log.display())]
    NotReady {
        /// What was awaited.
        what: &'static str,
        /// How long it was awaited.
        waited: Duration,
        /// The last error or answer seen while polling.
        last_answer: String,
        /// The log of the process that should have become ready.
        log: PathBuf,
        /// The end of that log.
        log_tail: String,
    },
    /// The kubeconfig this crate wrote was refused by kube (a bug here).
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A request to the API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The shared control plane failed to start earlier in this test binary.
    #[error("the shared control plane failed to start: {0}")]
    SharedStartFailed(String),
}

impl ControlPlaneError {
    /// A short, fixed reason for counting failures.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingEnv { .. } => "missing_env",
            Self::MissingBinary { .. } => "missing_binary",
            Self::Certificate(_) => "certificate",
            Self::Io { .. } => "io",
            Self::ProcessExited { .. } => "process_exited",
            Self::NotReady { .. } => "not_ready",
            Self::Kubeconfig(_) => "kubeconfig",
            Self::Kube(_) => "kube",
            Self::SharedStartFailed(_) => "shared_start_failed",
        }
    }

    /// Whether a process could not bind its port (taken by someone else since it was found free).
    pub fn is_port_conflict(&self) -> bool {
        matches!(self, Self::ProcessExited { log_tail, .. } if log_tail.contains("address already in use"))
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(log_tail: &str) -> ControlPlaneError {
        ControlPlaneError::ProcessExited {
            name: "etcd",
            status: "exit status: 1".into(),
            log: PathBuf::from("/tmp/etcd.log"),
            log_tail: log_tail.into(),
        }
    }

    #[test]
    fn a_taken_port_is_told_apart_from_other_exits() {
        let conflict = exited("listen tcp 127.0.0.1:2379: bind: address already in use");
        assert!(conflict.is_port_conflict());
        assert!(!exited("data-dir is not writable").is_port_conflict());
        assert!(!ControlPlaneError::MissingEnv { variable: "X" }.is_port_conflict());
        assert_eq!(
            conflict.to_string(),
            "etcd exited (exit status: 1); last lines of /tmp/etcd.log:\n\
             listen tcp 127.0.0.1:2379: bind: address already in use"
        );
    }
}
