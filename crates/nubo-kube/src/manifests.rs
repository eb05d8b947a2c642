//! The objects Nubo asks Kubernetes for, built by pure code from plain data: a member's pod and
//! a cluster's services (one per port mapping, as Stratos 4.1 made them), their names and labels,
//! and the node ports taken from the Kubernetes cluster's port range.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, LocalObjectReference, Pod, PodSpec, Probe,
    ResourceRequirements, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label every object Nubo makes carries (`app.kubernetes.io/managed-by=nubo`).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The label of the application (a label value: see [`label_value`]).
pub const APPLICATION_LABEL: &str = "nubo.io/application";
/// The label of the cluster; the services select the cluster's pods by it.
pub const CLUSTER_LABEL: &str = "nubo.io/cluster";
/// The label of the cluster instance.
pub const CLUSTER_INSTANCE_LABEL: &str = "nubo.io/cluster-instance";
/// The label of the member.
pub const MEMBER_LABEL: &str = "nubo.io/member";
/// The annotations keeping the ids as they are (a label value is cut and hashed when needed).
pub const MEMBER_ANNOTATION: &str = "nubo.io/member-id";
/// The cluster id, whole.
pub const CLUSTER_ANNOTATION: &str = "nubo.io/cluster-id";
/// The application id, whole.
pub const APPLICATION_ANNOTATION: &str = "nubo.io/application-id";
/// The port mapping's name, on a service.
pub const PORT_ANNOTATION: &str = "nubo.io/port-name";
/// The cluster instance id, whole.
pub const CLUSTER_INSTANCE_ANNOTATION: &str = "nubo.io/cluster-instance-id";
/// The cartridge type.
pub const SERVICE_ANNOTATION: &str = "nubo.io/service-name";
/// The network partition.
pub const NETWORK_PARTITION_ANNOTATION: &str = "nubo.io/network-partition-id";
/// The partition.
pub const PARTITION_ANNOTATION: &str = "nubo.io/partition-id";

/// A port of a cartridge's port mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Its name (`http-80`).
    pub name: String,
    /// `http`, `https`, `tcp` or `udp`.
    pub protocol: String,
    /// The port the workload listens on in its container.
    pub port: u16,
    /// `NodePort` (Stratos' default) or `ClusterIP`.
    pub service_type: String,
    /// A node port asked for (`kubernetesServicePort`); else one is taken from the range.
    pub node_port: Option<u16>,
}

/// What a member's pod is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInput {
    /// The member id.
    pub member_id: String,
    /// Its application.
    pub application_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Its cluster instance.
    pub cluster_instance_id: String,
    /// Its cartridge type.
    pub service_name: String,
    /// Its network partition.
    pub network_partition_id: String,
    /// Its partition.
    pub partition_id: String,
    /// The image (the cartridge's `imageId` for `kubernetes`).
    pub image: String,
    /// Its environment: the member's launch parameters.
    pub env: BTreeMap<String, String>,
    /// The cartridge's ports.
    pub ports: Vec<PortSpec>,
    /// A CPU limit as a Kubernetes quantity (`500m`, `2`); `None`: none.
    pub cpu: Option<String>,
    /// A memory limit as a Kubernetes quantity (`256Mi`); `None`: none.
    pub memory: Option<String>,
    /// Secrets to pull the image with (Stratos' `IMAGE_PULL_SECRETS`).
    pub pull_secrets: Vec<String>,
    /// Stratos' `IMAGE_PULL_POLICY` (`Always`, `IfNotPresent`, `Never`).
    pub pull_policy: Option<String>,
}

/// What a cartridge's properties say about its pods and services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CartridgeSettings {
    /// The CPU limit (`KUBERNETES_CONTAINER_CPU`, cores, or `cpuLimit`).
    pub cpu: Option<String>,
    /// The memory limit (`KUBERNETES_CONTAINER_MEMORY`, MB, or `memoryLimit`).
    pub memory: Option<String>,
    /// `KUBERNETES_SERVICE_SESSION_AFFINITY`.
    pub session_affinity: Option<String>,
    /// `IMAGE_PULL_SECRETS` (comma-separated).
    pub pull_secrets: Vec<String>,
    /// `IMAGE_PULL_POLICY`.
    pub pull_policy: Option<String>,
}

/// Reads a cartridge's properties (Stratos' names, and Nubo's `cpuLimit` and `memoryLimit`,
/// which win); a bad value is refused naming its property.
pub fn cartridge_settings(
    properties: &BTreeMap<String, String>,
) -> Result<CartridgeSettings, ManifestError> {
    let mut s = CartridgeSettings::default();
    if let Some(v) = properties.get("KUBERNETES_CONTAINER_CPU") {
        s.cpu = cpu_quantity("KUBERNETES_CONTAINER_CPU", v)?;
    }
    if let Some(v) = properties.get("cpuLimit") {
        s.cpu = cpu_quantity("cpuLimit", v)?;
    }
    if let Some(v) = properties.get("KUBERNETES_CONTAINER_MEMORY") {
        s.memory = memory_quantity("KUBERNETES_CONTAINER_MEMORY", v, true)?;
    }
    if let Some(v) = properties.get("memoryLimit") {
        s.memory = memory_quantity("memoryLimit", v, false)?;
    }
    if let Some(v) = properties.get("KUBERNETES_SERVICE_SESSION_AFFINITY") {
        match v.as_str() {
            "ClientIP" | "None" => s.session_affinity = Some(v.clone()),
            _ => {
                return Err(ManifestError::Property {
                    name: "KUBERNETES_SERVICE_SESSION_AFFINITY".into(),
                    reason: format!("`{v}` is neither `ClientIP` nor `None`"),
                });
            }
        }
    }
    if let Some(v) = properties.get("IMAGE_PULL_SECRETS") {
        s.pull_secrets = v
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(v) = properties.get("IMAGE_PULL_POLICY") {
        match v.as_str() {
            "Always" | "IfNotPresent" | "Never" => s.pull_policy = Some(v.clone()),
            _ => {
                return Err(ManifestError::Property {
                    name: "IMAGE_PULL_POLICY".into(),
                    reason: format!("`{v}` is not `Always`, `IfNotPresent` or `Never`"),
                });
            }
        }
    }
    Ok(s)
}

/// Why a manifest cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A property that does not read as its kind.
    #[error("`{name}`: {reason}")]
    Property {
        /// The property.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The cluster's node port range is used up, or a port asked for is taken.
    #[error("no node port for `{port}`: {reason}")]
    NodePort {
        /// The port mapping.
        port: String,
        /// Why.
        reason: String,
    },
}

/// FNV-1a, for short stable suffixes of names cut to Kubernetes' limits.
fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A DNS-1123 label (lower-case letters, digits and `-`, at most 63, starting and ending with
/// a letter or digit) made from `prefix` and `id`: other characters become `-`, and a name that
/// had to change or be cut ends with a hash of `id`, so that two ids never meet.
pub fn dns_label(prefix: &str, id: &str) -> String {
    let mut s: String = id
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let changed = s != id || prefix.len() + 1 + s.len() > 63;
    if changed {
        let hash = format!("{:08x}", fnv(id));
        s.truncate(63 - prefix.len() - 1 - 9);
        s = format!("{}-{hash}", s.trim_end_matches('-'));
    }
    let name = format!("{prefix}-{}", s.trim_matches('-'));
    name.trim_end_matches('-').to_owned()
}

/// A label value (at most 63 of letters, digits, `-`, `_`, `.`, starting and ending with a
/// letter or digit) standing for `id`; cut and hashed as [`dns_label`] when it must be.
pub fn label_value(id: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let clean = id.len() <= 63
        && id.chars().all(ok)
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if clean {
        return id.to_owned();
    }
    let mut s: String = id.chars().map(|c| if ok(c) { c } else { '-' }).collect();
    s.truncate(63 - 9);
    let s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = format!("{:08x}", fnv(id));
    if s.is_empty() {
        hash
    } else {
        format!("{s}-{hash}")
    }
}

/// The pod of a member.
pub fn pod_name(member_id: &str) -> String {
    dns_label("nubo", member_id)
}

/// The service of a cluster's port mapping.
pub fn service_name(cluster_id: &str, port_name: &str) -> String {
    dns_label("nubo", &format!("{cluster_id}-{port_name}"))
}

/// A CPU limit from Stratos' `KUBERNETES_CONTAINER_CPU` (cores; `0`: none) or Nubo's `cpuLimit`
/// (cores, fractions allowed): a quantity in millicores.
pub fn cpu_quantity(name: &str, value: &str) -> Result<Option<String>, ManifestError> {
    let cores: f64 = value.trim().parse().map_err(|_| ManifestError::Property {
        name: name.to_owned(),
        reason: format!("`{value}` is not a number of cores"),
    })?;
    if !cores.is_finite() || !(0.0..=1024.0).contains(&cores) {
        return Err(ManifestError::Property {
            name: name.to_owned(),
            reason: format!("`{value}` is not between 0 and 1024 cores"),
        });
    }
    let milli = (cores * 1000.0).round() as u64;
    Ok((milli > 0).then(|| format!("{milli}m")))
}

/// A memory limit from Stratos' `KUBERNETES_CONTAINER_MEMORY` (MB; `0`: none) or Nubo's
/// `memoryLimit` (`256m`, `1g`, bytes): a quantity in bytes.
pub fn memory_quantity(
    name: &str,
    value: &str,
    megabytes: bool,
) -> Result<Option<String>, ManifestError> {
    let v = value.trim().to_ascii_lowercase();
    let bad = || ManifestError::Property {
        name: name.to_owned(),
        reason: format!("`{value}` is not an amount of memory"),
    };
    let bytes: u64 = if megabytes {
        v.parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(1 << 20)
            .ok_or_else(bad)?
    } else {
        let (digits, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => v.split_at(i),
            None => (v.as_str(), ""),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let mult: u64 = match unit {
            "" | "b" => 1,
            "k" | "kb" => 1 << 10,
            "m" | "mb" => 1 << 20,
            "g" | "gb" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).ok_or_else(bad)?
    };
    Ok((bytes > 0).then(|| bytes.to_string()))
}

fn labels(input: &[(&str, &str)]) -> BTreeMap<String, String> {
    input
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The pod of a member: one container of the cartridge's image, its launch parameters in its
/// environment (with `PORT`, `PORT_<NAME>` and `NUBO_MEMBER_ID`), a TCP readiness probe on
/// each port (the agent's port check, done by the kubelet), its limits; no capability, no
/// privilege escalation, no service account token, no service links.
pub fn pod(input: &PodInput) -> Pod {
    let mut env: Vec<EnvVar> = input
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    let mut extra = BTreeMap::new();
    if let Some(first) = input.ports.first() {
        extra.insert("PORT".to_owned(), first.port.to_string());
    }
    for p in &input.ports {
        extra.insert(nubo_iaas::port_env_name(&p.name), p.port.to_string());
    }
    extra.insert("NUBO_MEMBER_ID".to_owned(), input.member_id.clone());
    for (k, v) in extra {
        if !input.env.contains_key(&k) {
            env.push(EnvVar {
                name: k,
                value: Some(v),
                ..Default::default()
            });
        }
    }
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &input.cpu {
        limits.insert("cpu".to_owned(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &input.memory {
        limits.insert("memory".to_owned(), Quantity(memory.clone()));
    }
    let readiness = input
        .ports
        .iter()
        .find(|p| p.protocol != "udp")
        .map(|p| Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(p.port)),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        });
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&input.member_id)),
            labels: Some(labels(&[
                (MANAGED_BY, "nubo"),
                (APPLICATION_LABEL, &label_value(&input.application_id)),
                (CLUSTER_LABEL, &label_value(&input.cluster_id)),
                (
                    CLUSTER_INSTANCE_LABEL,
                    &label_value(&input.cluster_instance_id),
                ),
                (MEMBER_LABEL, &label_value(&input.member_id)),
            ])),
            annotations: Some(labels(&[
                (MEMBER_ANNOTATION, &input.member_id),
                (CLUSTER_ANNOTATION, &input.cluster_id),
                (APPLICATION_ANNOTATION, &input.application_id),
                (CLUSTER_INSTANCE_ANNOTATION, &input.cluster_instance_id),
                (SERVICE_ANNOTATION, &input.service_name),
                (NETWORK_PARTITION_ANNOTATION, &input.network_partition_id),
                (PARTITION_ANNOTATION, &input.partition_id),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "workload".into(),
                image: Some(input.image.clone()),
                image_pull_policy: input.pull_policy.clone(),
                env: Some(env),
                ports: Some(
                    input
                        .ports
                        .iter()
                        .map(|p| ContainerPort {
                            container_port: i32::from(p.port),
                            protocol: Some(if p.protocol == "udp" { "UDP" } else { "TCP" }.into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                resources: (!limits.is_empty()).then(|| ResourceRequirements {
                    limits: Some(limits),
                    ..Default::default()
                }),
                readiness_probe: readiness,
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            image_pull_secrets: (!input.pull_secrets.is_empty()).then(|| {
                input
                    .pull_secrets
                    .iter()
                    .map(|s| LocalObjectReference { name: s.clone() })
                    .collect()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a cluster's services are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesInput {
    /// The application.
    pub application_id: String,
    /// The cluster (its pods are selected by its label).
    pub cluster_id: String,
    /// The cartridge's ports.
    pub ports: Vec<PortSpec>,
    /// Stratos' `KUBERNETES_SERVICE_SESSION_AFFINITY` (`ClientIP`, `None`).
    pub session_affinity: Option<String>,
}

/// Node ports for `ports` within `[lower, upper]`, none of `used`: each asked-for port must be
/// free; the others take the lowest free ones, in order. `None` for a `ClusterIP` port.
pub fn node_ports(
    ports: &[PortSpec],
    (lower, upper): (u16, u16),
    used: &BTreeSet<u16>,
) -> Result<Vec<Option<u16>>, ManifestError> {
    let mut taken = used.clone();
    for p in ports {
        if let Some(n) = p.node_port.filter(|_| p.service_type == "NodePort") {
            if n < lower || n > upper {
                return Err(ManifestError::NodePort {
                    port: p.name.clone(),
                    reason: format!("{n} is outside the cluster's range {lower}-{upper}"),
                });
            }
            if !taken.insert(n) {
                return Err(ManifestError::NodePort {
                    port: p.name.clone(),
                    reason: format!("{n} is already taken"),
                });
            }
        }
    }
    let mut next = lower;
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        if p.service_type != "NodePort" {
            out.push(None);
            continue;
        }
        if let Some(n) = p.node_port {
            out.push(Some(n));
            continue;
        }
        while taken.contains(&next) && next < upper {
            next += 1;
        }
        if taken.contains(&next) || next > upper {
            return Err(ManifestError::NodePort {
                port: p.name.clone(),
                reason: format!("the cluster's range {lower}-{upper} is used up"),
            });
        }
        taken.insert(next);
        out.push(Some(next));
    }
    Ok(out)
}

/// A cluster's services, one per port mapping, with the node ports [`node_ports`] chose.
pub fn services(input: &ServicesInput, node_ports: &[Option<u16>]) -> Vec<Service> {
    input
        .ports
        .iter()
        .zip(node_ports.iter().chain(std::iter::repeat(&None)))
        .map(|(p, node_port)| Service {
            metadata: ObjectMeta {
                name: Some(service_name(&input.cluster_id, &p.name)),
                labels: Some(labels(&[
                    (MANAGED_BY, "nubo"),
                    (APPLICATION_LABEL, &label_value(&input.application_id)),
                    (CLUSTER_LABEL, &label_value(&input.cluster_id)),
                ])),
                annotations: Some(labels(&[
                    (CLUSTER_ANNOTATION, &input.cluster_id),
                    (APPLICATION_ANNOTATION, &input.application_id),
                    (PORT_ANNOTATION, &p.name),
                ])),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(p.service_type.clone()),
                selector: Some(labels(&[
                    (MANAGED_BY, "nubo"),
                    (CLUSTER_LABEL, &label_value(&input.cluster_id)),
                ])),
                ports: Some(vec![ServicePort {
                    name: Some(dns_label("p", &p.name)),
                    port: i32::from(p.port),
                    target_port: Some(IntOrString::Int(i32::from(p.port))),
                    node_port: node_port.map(i32::from),
                    protocol: Some(if p.protocol == "udp" { "UDP" } else { "TCP" }.into()),
                    ..Default::default()
                }]),
                session_affinity: input.session_affinity.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_distinct() {
        let a = pod_name("shop.web.np1-p1.1");
        let b = pod_name("shop.web.np1_p1.1");
        assert_ne!(a, b);
        for n in [&a, &b, &pod_name(&"x".repeat(200)), &pod_name("Web")] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.ends_with('-') && !n.starts_with('-'), "{n}");
        }
        assert_eq!(pod_name("web-1"), "nubo-web-1", "a clean id is kept");
        assert_eq!(label_value("shop"), "shop");
        let long = label_value(&"y".repeat(100));
        assert!(long.len() <= 63 && long != label_value(&"y".repeat(101)));
        assert_ne!(label_value("a/b"), label_value("a:b"));
    }

    #[test]
    fn limits_read_stratos_and_nubo_properties() {
        assert_eq!(cpu_quantity("c", "0").unwrap(), None);
        assert_eq!(cpu_quantity("c", "1.5").unwrap(), Some("1500m".into()));
        assert!(cpu_quantity("c", "lots").is_err());
        assert!(cpu_quantity("c", "-1").is_err());
        assert_eq!(memory_quantity("m", "0", true).unwrap(), None);
        assert_eq!(
            memory_quantity("m", "512", true).unwrap(),
            Some((512u64 << 20).to_string())
        );
        assert_eq!(
            memory_quantity("m", "64m", false).unwrap(),
            Some((64u64 << 20).to_string())
        );
        assert!(memory_quantity("m", "1t", false).is_err());
    }

    fn port(name: &str, port: u16, ty: &str, node_port: Option<u16>) -> PortSpec {
        PortSpec {
            name: name.into(),
            protocol: "http".into(),
            port,
            service_type: ty.into(),
            node_port,
        }
    }

    #[test]
    fn node_ports_come_from_the_range_and_never_twice() {
        let used: BTreeSet<u16> = [30000, 30002].into();
        let ports = [
            port("a", 80, "NodePort", None),
            port("b", 81, "ClusterIP", None),
            port("c", 82, "NodePort", Some(30001)),
            port("d", 83, "NodePort", None),
        ];
        assert_eq!(
            node_ports(&ports, (30000, 30010), &used).unwrap(),
            [Some(30003), None, Some(30001), Some(30004)]
        );
        let taken = [port("a", 80, "NodePort", Some(30000))];
        assert!(node_ports(&taken, (30000, 30010), &used).is_err());
        let full: BTreeSet<u16> = (30000..=30001).collect();
        let e = node_ports(&[port("a", 80, "NodePort", None)], (30000, 30001), &full).unwrap_err();
        assert!(e.to_string().contains("used up"), "{e}");
    }
}
