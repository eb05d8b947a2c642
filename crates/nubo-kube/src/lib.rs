//! The `kubernetes` provider (issue 14, following Stratos 4.1's `KubernetesIaas`): a member is a
//! pod labelled with its application, cluster and member; a cluster's port mappings are
//! services; status comes from a watch of the pods; a restarted controller adopts the pods it
//! finds by their labels. The manifests are pure code ([`manifests`]); the API calls are
//! [`cluster::KubeCluster`]'s.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod cluster;
pub mod manifests;
pub mod provider;

#[cfg(test)]
mod stratos_samples;

#[cfg(any(test, feature = "fake"))]
#[allow(clippy::expect_used)]
pub mod fake;
