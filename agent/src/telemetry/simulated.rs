//! A fake GPU source for hosts without GPUs: GPUs declared on the command line.

use super::{GpuDevice, GpuSource, Inventory};

/// GPUs declared by a spec such as `H100-80GB:8` or `H100-80GB:4,L4-24GB:2` (type, then
/// count; indices follow in order). The memory is read from the type's `-NNGB` suffix when
/// it has one. This is a fake for tests and local runs; see the module docs of `telemetry`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedGpus {
    gpus: Vec<GpuDevice>,
}

/// A `--gpus` spec that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "invalid simulated GPU spec `{spec}`: {reason} (expected TYPE:COUNT[,TYPE:COUNT…], e.g. H100-80GB:8)"
)]
pub struct SimulatedGpusError {
    spec: String,
    reason: String,
}

impl SimulatedGpus {
    /// Parses a spec; an empty spec declares no GPUs.
    pub fn parse(spec: &str) -> Result<SimulatedGpus, SimulatedGpusError> {
        let error = |reason: String| SimulatedGpusError {
            spec: spec.to_owned(),
            reason,
        };
        let mut gpus = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (gpu_type, count) = match part.rsplit_once(':') {
                Some((t, n)) => {
                    let n: u32 = n
                        .trim()
                        .parse()
                        .map_err(|_| error(format!("`{n}` is not a GPU count")))?;
                    (t.trim(), n)
                }
                None => (part, 1),
            };
            if gpu_type.is_empty() || gpu_type.eq_ignore_ascii_case("cpu") {
                return Err(error(format!("`{part}` names no GPU type")));
            }
            if count == 0 || count > 64 {
                return Err(error(format!(
                    "a host has 1 to 64 GPUs of a type, not {count}"
                )));
            }
            for _ in 0..count {
                let index = gpus.len() as u32;
                gpus.push(GpuDevice {
                    index,
                    uuid: format!("SIMULATED-{gpu_type}-{index}"),
                    name: format!("Simulated {gpu_type}"),
                    gpu_type: gpu_type.to_owned(),
                    memory_gb: memory_from_type(gpu_type).unwrap_or(0.0),
                });
            }
        }
        Ok(SimulatedGpus { gpus })
    }
}

/// `H100-80GB` → 80.
fn memory_from_type(gpu_type: &str) -> Option<f64> {
    let (_, tail) = gpu_type.rsplit_once('-')?;
    let digits = tail
        .strip_suffix("GB")
        .or_else(|| tail.strip_suffix("gb"))?;
    digits.parse().ok()
}

impl GpuSource for SimulatedGpus {
    fn inventory(&self) -> Inventory {
        Inventory {
            gpus: self.gpus.clone(),
            driver_version: None,
            cuda_version: None,
            source: "simulated".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_counts_with_consecutive_indices() {
        let gpus = SimulatedGpus::parse("H100-80GB:2, L4-24GB")
            .unwrap()
            .inventory();
        let summary: Vec<_> = gpus
            .gpus
            .iter()
            .map(|g| (g.index, g.gpu_type.as_str(), g.memory_gb))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "H100-80GB", 80.0),
                (1, "H100-80GB", 80.0),
                (2, "L4-24GB", 24.0)
            ]
        );
        assert!(gpus.gpus.iter().all(|g| g.uuid.starts_with("SIMULATED-")));
        assert_eq!(gpus.source, "simulated");
    }

    #[test]
    fn empty_spec_is_no_gpus() {
        assert!(
            SimulatedGpus::parse("")
                .unwrap()
                .inventory()
                .gpus
                .is_empty()
        );
    }

    #[test]
    fn bad_specs_say_what_was_expected() {
        for spec in ["H100:x", "H100:0", ":2", "cpu:1"] {
            let err = SimulatedGpus::parse(spec).unwrap_err().to_string();
            assert!(err.contains("expected TYPE:COUNT"), "{err}");
            assert!(err.contains(spec), "{err}");
        }
    }
}
