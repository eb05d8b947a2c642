//! Any bytes as each kind of Stratos artifact: the strict parser, then the artifact's own checks
//! and its references. Nothing may panic; what parses must serialize and parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_model::{
    Application, ApplicationPolicy, Artifact, AutoscalingPolicy, Cartridge, CartridgeGroup,
    DeploymentPolicy, KubernetesCluster, NetworkPartition, Problems, Tenant, User,
};

fn check<T: Artifact>(data: &[u8]) {
    let Ok(a) = nubo_model::json::from_slice::<T>(data) else {
        return;
    };
    let mut p = Problems::default();
    a.validate(&mut p);
    let _ = a.references();
    let _ = a.id();
    let text = serde_json::to_vec(&a).expect("a parsed artifact serializes");
    nubo_model::json::from_slice::<T>(&text).expect("what was parsed parses back once written");
}

fuzz_target!(|data: &[u8]| {
    let _ = nubo_model::json::parse_strict(data);
    check::<NetworkPartition>(data);
    check::<DeploymentPolicy>(data);
    check::<AutoscalingPolicy>(data);
    check::<ApplicationPolicy>(data);
    check::<Cartridge>(data);
    check::<CartridgeGroup>(data);
    check::<Application>(data);
    check::<KubernetesCluster>(data);
    check::<Tenant>(data);
    check::<User>(data);
});
