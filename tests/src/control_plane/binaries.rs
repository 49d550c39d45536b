//! Where the control plane programs are: the setup script exports their directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ControlPlaneError;

/// The variable tests/setup/10-control-plane.sh exports: the directory of every binary below.
pub const BIN_DIR_ENV: &str = "MCP_AUTHZ_CONTROL_PLANE_BIN";
/// The helm v4 binary.
pub const HELM_ENV: &str = "MCP_AUTHZ_HELM";
/// The kubectl binary.
pub const KUBECTL_ENV: &str = "MCP_AUTHZ_KUBECTL";

/// The three programs of the control plane.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    pub fn from_env() -> Result<Self, ControlPlaneError> {
        Self::from_dir_var(std::env::var_os(BIN_DIR_ENV).map(PathBuf::from))
    }

    fn from_dir_var(dir: Option<PathBuf>) -> Result<Self, ControlPlaneError> {
        let dir =
            dir.filter(|dir| !dir.as_os_str().is_empty())
                .ok_or(ControlPlaneError::MissingEnv {
                    variable: BIN_DIR_ENV,
                })?;
        Ok(Self {
            etcd: executable(dir.join("etcd"))?,
            kube_apiserver: executable(dir.join("kube-apiserver"))?,
            kube_controller_manager: executable(dir.join("kube-controller-manager"))?,
        })
    }
}

/// The helm binary exported by the setup script.
pub fn helm() -> Result<PathBuf, ControlPlaneError> {
    tool_from_env(HELM_ENV)
}

/// The kubectl binary exported by the setup script.
pub fn kubectl() -> Result<PathBuf, ControlPlaneError> {
    tool_from_env(KUBECTL_ENV)
}

/// `kubectl --kubeconfig KUBECONFIG`, ready for more arguments.
pub fn kubectl_command(kubeconfig: &Path) -> Result<Command, ControlPlaneError> {
    let mut command = Command::new(kubectl()?);
    command.arg("--kubeconfig").arg(kubeconfig);
    Ok(command)
}

/// `helm --kubeconfig KUBECONFIG`, ready for more arguments, with helm's cache, configuration and data under
/// `helm_home` so that a test shares nothing with the user's helm set-up or with other tests.
pub fn helm_command(kubeconfig: &Path, helm_home: &Path) -> Result<Command, ControlPlaneError> {
    let mut command = Command::new(helm()?);
    command
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .arg("--kubeconfig")
        .arg(kubeconfig);
    Ok(command)
}

fn tool_from_env(variable: &'static str) -> Result<PathBuf, ControlPlaneError> {
    match std::env::var_os(variable) {
        Some(path) if !path.is_empty() => executable(PathBuf::from(path)),
        _ => Err(ControlPlaneError::MissingEnv { variable }),
    }
}

fn executable(path: PathBuf) -> Result<PathBuf, ControlPlaneError> {
    if is_executable_file(&path) {
        Ok(path)
    } else {
        Err(ControlPlaneError::MissingBinary { path })
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_directory_names_the_setup_script() {
        let error = Binaries::from_dir_var(None).unwrap_err();
        assert_eq!(error.metric_label(), "missing_env");
        assert_eq!(
            error.to_string(),
            "MCP_AUTHZ_CONTROL_PLANE_BIN is not set: run the tests through tests/run-all, or \
             `source tests/setup/10-control-plane.sh` first (it builds kube-apiserver, kube-controller-manager \
             and etcd and exports MCP_AUTHZ_CONTROL_PLANE_BIN)"
        );
    }

    #[test]
    fn empty_directory_counts_as_unset() {
        let error = Binaries::from_dir_var(Some(PathBuf::new())).unwrap_err();
        assert!(matches!(
            error,
            ControlPlaneError::MissingEnv {
                variable: BIN_DIR_ENV
            }
        ));
    }

    #[test]
    fn directory_without_the_programs_names_the_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let error = Binaries::from_dir_var(Some(dir.path().to_path_buf())).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{}/etcd is not an executable file: rerun tests/setup/10-control-plane.sh",
                dir.path().display()
            )
        );
    }

    #[test]
    fn a_file_without_execute_permission_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        assert!(
            matches!(executable(path.clone()), Err(ControlPlaneError::MissingBinary { path: p }) if p == path)
        );
    }
}
