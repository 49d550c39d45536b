//! Support for the cross-program tests: starts real servers and tears them down on drop.
//!
//! - [`control_plane`]: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager built
//!   from their Go modules) with an admin client, service-account clients and kubeconfig files for helm/kubectl.
#![forbid(unsafe_code)]

pub mod control_plane;
