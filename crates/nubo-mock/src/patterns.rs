//! Health-statistics patterns in Stratos' `mock-iaas.xml` format, and the value a pattern gives at
//! a moment: pure.
//!
//! ```xml
//! <mock-iaas enabled="true">
//!   <health-statistics>
//!     <cartridge type="c7-single-cluster-scaling-test">
//!       <pattern factor="memory-consumption" mode="continue">
//!         <sampleValues>60,60,10,10</sampleValues>
//!         <sampleDuration>60</sampleDuration>
//!       </pattern>
//!     </cartridge>
//!   </health-statistics>
//! </mock-iaas>
//! ```

use std::collections::BTreeMap;

/// A statistic a pattern drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Factor {
    /// `memory-consumption`.
    MemoryConsumption,
    /// `load-average`.
    LoadAverage,
    /// `requests-in-flight`.
    RequestsInFlight,
}

/// What happens after the last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Start again from the first sample.
    Loop,
    /// Keep the last value for good.
    Continue,
    /// Stop publishing the factor.
    Stop,
}

/// One factor's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    /// The factor.
    pub factor: Factor,
    /// After the last sample.
    pub mode: Mode,
    /// The values, in turn.
    pub samples: Vec<f64>,
    /// Seconds each value is held (≤ 0: the pattern is disabled, the factor not published).
    pub sample_duration: f64,
}

impl Pattern {
    /// The value `elapsed` seconds (of the mock clock) after the pattern started; `None`: the
    /// factor is not published then.
    pub fn value_at(&self, elapsed: f64) -> Option<f64> {
        if self.sample_duration <= 0.0 || self.samples.is_empty() || !elapsed.is_finite() {
            return None;
        }
        let i = (elapsed.max(0.0) / self.sample_duration).floor() as usize;
        let n = self.samples.len();
        if i < n {
            return Some(self.samples[i]);
        }
        match self.mode {
            Mode::Loop => Some(self.samples[i % n]),
            Mode::Continue => self.samples.last().copied(),
            Mode::Stop => None,
        }
    }
}

/// The values a cartridge type's members publish at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Values {
    /// Memory consumption (percent).
    pub memory_consumption: Option<f64>,
    /// Load average (percent).
    pub load_average: Option<f64>,
    /// Requests in flight (for the cluster).
    pub requests_in_flight: Option<f64>,
}

/// Patterns by cartridge type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Patterns {
    /// Cartridge type → its patterns.
    pub by_type: BTreeMap<String, Vec<Pattern>>,
}

fn elements<'a, 'i>(
    n: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> Vec<roxmltree::Node<'a, 'i>> {
    n.children()
        .filter(|c| c.is_element() && c.tag_name().name() == name)
        .collect()
}

/// What a member of a type without patterns publishes (Stratos' defaults).
pub const DEFAULT_VALUES: Values = Values {
    memory_consumption: Some(20.0),
    load_average: Some(20.0),
    requests_in_flight: Some(1.0),
};

impl Patterns {
    /// The values of `cartridge_type` `elapsed` seconds after its patterns started. A type
    /// without patterns publishes the defaults; a type with patterns publishes only the factors
    /// it has patterns for.
    pub fn values(&self, cartridge_type: &str, elapsed: f64) -> Values {
        let Some(patterns) = self.by_type.get(cartridge_type) else {
            return DEFAULT_VALUES;
        };
        let mut v = Values::default();
        for p in patterns {
            let value = p.value_at(elapsed);
            match p.factor {
                Factor::MemoryConsumption => v.memory_consumption = value,
                Factor::LoadAverage => v.load_average = value,
                Factor::RequestsInFlight => v.requests_in_flight = value,
            }
        }
        v
    }

    /// Reads a `mock-iaas.xml`. A missing required attribute or element is an error naming it,
    /// as in Stratos.
    pub fn from_xml(text: &str) -> Result<Self, String> {
        let doc = roxmltree::Document::parse(text).map_err(|e| format!("not XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "mock-iaas" {
            return Err(format!(
                "the root element is <{}>, not <mock-iaas>",
                root.tag_name().name()
            ));
        }
        root.attribute("enabled")
            .ok_or("<mock-iaas> has no `enabled` attribute")?;
        let mut by_type: BTreeMap<String, Vec<Pattern>> = BTreeMap::new();
        for stats in elements(root, "health-statistics") {
            for cartridge in elements(stats, "cartridge") {
                let ty = cartridge
                    .attribute("type")
                    .ok_or("a <cartridge> has no `type` attribute")?;
                let list = by_type.entry(ty.to_owned()).or_default();
                for p in elements(cartridge, "pattern") {
                    let factor = match p.attribute("factor") {
                        Some("memory-consumption") => Factor::MemoryConsumption,
                        Some("load-average") => Factor::LoadAverage,
                        Some("requests-in-flight") => Factor::RequestsInFlight,
                        Some(other) => {
                            return Err(format!(
                                "cartridge {ty}: unknown factor `{other}` (memory-consumption, load-average or requests-in-flight)"
                            ));
                        }
                        None => {
                            return Err(format!(
                                "cartridge {ty}: a <pattern> has no `factor` attribute"
                            ));
                        }
                    };
                    let mode = match p.attribute("mode") {
                        Some("loop") => Mode::Loop,
                        Some("continue") => Mode::Continue,
                        Some("stop") => Mode::Stop,
                        Some(other) => {
                            return Err(format!(
                                "cartridge {ty}: unknown mode `{other}` (loop, continue or stop)"
                            ));
                        }
                        None => {
                            return Err(format!(
                                "cartridge {ty}: a <pattern> has no `mode` attribute"
                            ));
                        }
                    };
                    let text_of = |name: &str| {
                        p.children()
                            .find(|c| c.is_element() && c.tag_name().name() == name)
                            .map(|c| c.text().unwrap_or("").trim().to_owned())
                            .ok_or(format!("cartridge {ty}: a <pattern> has no <{name}>"))
                    };
                    let samples = text_of("sampleValues")?
                        .split(',')
                        .map(|v| {
                            v.trim().parse::<f64>().map_err(|_| {
                                format!(
                                    "cartridge {ty}: sample value `{}` is not a number",
                                    v.trim()
                                )
                            })
                        })
                        .collect::<Result<Vec<f64>, String>>()?;
                    let sample_duration =
                        text_of("sampleDuration")?.parse::<f64>().map_err(|_| {
                            format!("cartridge {ty}: <sampleDuration> is not a number of seconds")
                        })?;
                    list.push(Pattern {
                        factor,
                        mode,
                        samples,
                        sample_duration,
                    });
                }
            }
        }
        Ok(Patterns { by_type })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<mock-iaas enabled="true">
  <health-statistics>
    <cartridge type="c7">
      <pattern factor="memory-consumption" mode="continue">
        <sampleValues>60,60,10</sampleValues>
        <sampleDuration>60</sampleDuration>
      </pattern>
      <pattern factor="load-average" mode="loop">
        <sampleValues>1,2</sampleValues>
        <sampleDuration>10</sampleDuration>
      </pattern>
    </cartridge>
    <cartridge type="rr">
      <pattern factor="memory-consumption" mode="stop">
        <sampleValues>20,20</sampleValues>
        <sampleDuration>30</sampleDuration>
      </pattern>
    </cartridge>
  </health-statistics>
</mock-iaas>"#;

    #[test]
    fn patterns_follow_their_mode_after_the_last_sample() {
        let p = Patterns::from_xml(XML).expect("valid");
        let v = |ty: &str, t: f64| p.values(ty, t);
        assert_eq!(v("c7", 0.0).memory_consumption, Some(60.0));
        assert_eq!(v("c7", 119.9).memory_consumption, Some(60.0));
        assert_eq!(v("c7", 120.0).memory_consumption, Some(10.0));
        assert_eq!(v("c7", 10_000.0).memory_consumption, Some(10.0), "continue");
        assert_eq!(v("c7", 25.0).load_average, Some(1.0), "loop: 1,2,1");
        assert_eq!(v("c7", 35.0).load_average, Some(2.0));
        assert_eq!(
            v("c7", 0.0).requests_in_flight,
            None,
            "no pattern, not published"
        );
        assert_eq!(v("rr", 59.0).memory_consumption, Some(20.0));
        assert_eq!(v("rr", 60.0).memory_consumption, None, "stop");
        assert_eq!(v("rr", 0.0).load_average, None);
        assert_eq!(v("php", 5.0), DEFAULT_VALUES, "no patterns: the defaults");
    }

    #[test]
    fn a_bad_file_is_refused_naming_what_is_wrong() {
        let bad = |x: &str| Patterns::from_xml(x).expect_err("invalid");
        assert!(bad("<x/>").contains("<mock-iaas>"));
        assert!(bad("<mock-iaas/>").contains("enabled"));
        assert!(bad(r#"<mock-iaas enabled="true"><health-statistics><cartridge type="a"><pattern factor="cpu" mode="loop"/></cartridge></health-statistics></mock-iaas>"#).contains("unknown factor `cpu`"));
        assert!(bad(r#"<mock-iaas enabled="true"><health-statistics><cartridge type="a"><pattern factor="load-average" mode="loop"><sampleValues>1</sampleValues></pattern></cartridge></health-statistics></mock-iaas>"#).contains("<sampleDuration>"));
        assert!(bad(r#"<mock-iaas enabled="true"><health-statistics><cartridge type="a"><pattern factor="load-average" mode="loop"><sampleValues>1,x</sampleValues><sampleDuration>1</sampleDuration></pattern></cartridge></health-statistics></mock-iaas>"#).contains("`x`"));
        let p = Pattern {
            factor: Factor::LoadAverage,
            mode: Mode::Loop,
            samples: vec![1.0],
            sample_duration: 0.0,
        };
        assert_eq!(p.value_at(5.0), None, "a duration ≤ 0 disables the pattern");
    }
}
