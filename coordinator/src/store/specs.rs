//! Configuration parts stored once per campaign (`specs` table): models, GPUs, frameworks,
//! quantizations, workloads and load points. A 100,000-unit campaign has a few hundred
//! distinct parts; units and steps refer to them by `spec_id`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rusqlite::Connection;
use serde::de::DeserializeOwned;

use super::error::{SqlContext, StoreError};
use crate::domain::{
    FrameworkSpec, GpuRequirement, LoadPoint, ModelSpec, QuantizationSpec, UnitConfig, WorkloadSpec,
};

/// The `specs.kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SpecKind {
    Model,
    Gpu,
    Framework,
    Quantization,
    Workload,
    Load,
}

impl SpecKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SpecKind::Model => "model",
            SpecKind::Gpu => "gpu",
            SpecKind::Framework => "framework",
            SpecKind::Quantization => "quantization",
            SpecKind::Workload => "workload",
            SpecKind::Load => "load",
        }
    }
}

/// A part that can be stored in `specs`.
pub(crate) trait Spec: PartialEq + serde::Serialize {
    const KIND: SpecKind;
    /// A hash of fields that usually tell values apart; equal values must hash equal.
    fn bucket(&self, h: &mut Fnv);
}

impl Spec for ModelSpec {
    const KIND: SpecKind = SpecKind::Model;
    fn bucket(&self, h: &mut Fnv) {
        (&self.name, &self.path).hash(h);
    }
}

impl Spec for GpuRequirement {
    const KIND: SpecKind = SpecKind::Gpu;
    fn bucket(&self, h: &mut Fnv) {
        (&self.gpu_type, self.count).hash(h);
    }
}

impl Spec for FrameworkSpec {
    const KIND: SpecKind = SpecKind::Framework;
    fn bucket(&self, h: &mut Fnv) {
        (&self.name, &self.command).hash(h);
    }
}

impl Spec for QuantizationSpec {
    const KIND: SpecKind = SpecKind::Quantization;
    fn bucket(&self, h: &mut Fnv) {
        (&self.name, &self.args).hash(h);
    }
}

impl Spec for WorkloadSpec {
    const KIND: SpecKind = SpecKind::Workload;
    fn bucket(&self, h: &mut Fnv) {
        (&self.name, self.seed).hash(h);
    }
}

impl Spec for LoadPoint {
    const KIND: SpecKind = SpecKind::Load;
    fn bucket(&self, h: &mut Fnv) {
        match self {
            LoadPoint::Concurrency(n) => (0u8, u64::from(*n)).hash(h),
            LoadPoint::Rate { rps, .. } => (1u8, rps.to_bits()).hash(h),
            LoadPoint::TimeScale(x) => (2u8, x.to_bits()).hash(h),
            LoadPoint::Search(s) => (3u8, s.spec.min.to_bits(), s.spec.max.to_bits()).hash(h),
        }
    }
}

/// FNV-1a: the bucket hash of [`Interner`], a few instructions per byte on short strings
/// (SipHash's flooding resistance buys nothing for a submitter's own matrix).
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Distinct parts found while encoding, waiting to be stored: each gets the next index of
/// one numbering shared by every kind, which units and steps refer to.
#[derive(Default)]
pub(crate) struct NewSpecs {
    /// Index the next new part gets.
    next: usize,
    /// `(kind, JSON)` of the parts numbered since the last [`NewSpecs::take`], in order.
    pending: Vec<(SpecKind, String)>,
}

impl NewSpecs {
    /// The parts numbered since the last call, in index order.
    pub(crate) fn take(&mut self) -> Vec<(SpecKind, String)> {
        std::mem::take(&mut self.pending)
    }
}

/// Deduplicates parts by value without serializing every copy: a matrix has a handful of
/// frameworks or workloads, each copied into thousands of units or steps.
pub(crate) struct Interner<'a, T> {
    /// Distinct values and their shared index.
    distinct: Vec<(&'a T, usize)>,
    /// Bucket hash → positions in `distinct`.
    buckets: HashMap<u64, Vec<usize>, BuildHasherDefault<Fnv>>,
    /// Position in `distinct` of the value returned last: consecutive units mostly share
    /// their model, GPU and framework, consecutive steps their workload.
    last: Option<usize>,
}

impl<T> Default for Interner<'_, T> {
    fn default() -> Self {
        Interner {
            distinct: Vec::new(),
            buckets: HashMap::default(),
            last: None,
        }
    }
}

impl<'a, T: Spec> Interner<'a, T> {
    /// The shared index of `value`; a value not seen before is numbered, encoded and
    /// queued in `new`.
    pub(crate) fn intern(&mut self, value: &'a T, new: &mut NewSpecs) -> Result<usize, StoreError> {
        if let Some(last) = self.last
            && self.distinct[last].0 == value
        {
            return Ok(self.distinct[last].1);
        }
        let mut h = Fnv::default();
        value.bucket(&mut h);
        let bucket = self.buckets.entry(h.finish()).or_default();
        let position = match bucket.iter().find(|&&i| self.distinct[i].0 == value) {
            Some(&i) => i,
            // A value unequal to itself (NaN) lands here each time; the writer still
            // stores equal JSON once.
            None => {
                let json = serde_json::to_string(value).map_err(|source| StoreError::Json {
                    action: "encode a configuration part",
                    source,
                })?;
                new.pending.push((T::KIND, json));
                self.distinct.push((value, new.next));
                new.next += 1;
                bucket.push(self.distinct.len() - 1);
                self.distinct.len() - 1
            }
        };
        self.last = Some(position);
        Ok(self.distinct[position].1)
    }
}

/// A decoded `specs` row.
#[derive(Debug, Clone)]
pub(crate) enum Part {
    Model(ModelSpec),
    Gpu(GpuRequirement),
    Framework(FrameworkSpec),
    Quantization(QuantizationSpec),
    Workload(WorkloadSpec),
    Load(LoadPoint),
}

/// The decoded parts of one campaign, for assembling unit configs and steps.
pub(crate) struct Parts(HashMap<i64, Part>);

impl Parts {
    /// Loads every part of a campaign.
    pub(crate) fn load(conn: &Connection, campaign_key: i64) -> Result<Parts, StoreError> {
        let mut stmt = conn
            .prepare_cached("SELECT spec_id, kind, spec_json FROM specs WHERE campaign_key = ?1")
            .sql("read configuration parts")?;
        let mut rows = stmt.query([campaign_key]).sql("read configuration parts")?;
        let mut parts = HashMap::new();
        while let Some(r) = rows.next().sql("read configuration parts")? {
            let id: i64 = r.get(0).sql("read configuration parts")?;
            let kind: String = r.get(1).sql("read configuration parts")?;
            let json: String = r.get(2).sql("read configuration parts")?;
            parts.insert(id, decode_part(&kind, &json)?);
        }
        Ok(Parts(parts))
    }

    /// No parts yet: [`Parts::fetch`] loads them one at a time, for reads that need a
    /// few parts of a large campaign.
    pub(crate) fn lazy() -> Parts {
        Parts(HashMap::new())
    }

    /// The part with this id, loaded on first use.
    pub(crate) fn fetch(&mut self, conn: &Connection, id: i64) -> Result<&Part, StoreError> {
        match self.0.entry(id) {
            Entry::Occupied(known) => Ok(known.into_mut()),
            Entry::Vacant(slot) => {
                let (kind, json): (String, String) = conn
                    .prepare_cached("SELECT kind, spec_json FROM specs WHERE spec_id = ?1")
                    .and_then(|mut s| s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))))
                    .sql("read a configuration part")?;
                Ok(slot.insert(decode_part(&kind, &json)?))
            }
        }
    }

    /// Loads every part of `ids` not loaded yet.
    pub(crate) fn fetch_all(&mut self, conn: &Connection, ids: &[i64]) -> Result<(), StoreError> {
        for &id in ids {
            self.fetch(conn, id)?;
        }
        Ok(())
    }

    fn get(&self, id: i64, column: &'static str) -> Result<&Part, StoreError> {
        self.0.get(&id).ok_or_else(|| StoreError::BadValue {
            column,
            value: format!("spec {id} (missing)"),
        })
    }

    /// Assembles a unit config from its parts.
    pub(crate) fn config(
        &self,
        [model, gpu, framework, quantization]: [i64; 4],
        extra_args: String,
        labels_json: &str,
    ) -> Result<UnitConfig, StoreError> {
        let wrong = |column: &'static str, id: i64| StoreError::BadValue {
            column,
            value: format!("spec {id} (wrong kind)"),
        };
        let Part::Model(model_spec) = self.get(model, "units.model_spec")? else {
            return Err(wrong("units.model_spec", model));
        };
        let Part::Gpu(gpu_spec) = self.get(gpu, "units.gpu_spec")? else {
            return Err(wrong("units.gpu_spec", gpu));
        };
        let Part::Framework(framework_spec) = self.get(framework, "units.framework_spec")? else {
            return Err(wrong("units.framework_spec", framework));
        };
        let Part::Quantization(quantization_spec) =
            self.get(quantization, "units.quantization_spec")?
        else {
            return Err(wrong("units.quantization_spec", quantization));
        };
        let labels = if labels_json == "{}" {
            Default::default()
        } else {
            decode(labels_json)?
        };
        Ok(UnitConfig {
            model: model_spec.clone(),
            gpu: gpu_spec.clone(),
            framework: framework_spec.clone(),
            quantization: quantization_spec.clone(),
            extra_args,
            labels,
        })
    }

    /// A step's workload.
    pub(crate) fn workload(&self, id: i64) -> Result<&WorkloadSpec, StoreError> {
        match self.get(id, "steps.workload_spec")? {
            Part::Workload(w) => Ok(w),
            _ => Err(StoreError::BadValue {
                column: "steps.workload_spec",
                value: format!("spec {id} (wrong kind)"),
            }),
        }
    }

    /// A step's load point.
    pub(crate) fn load_point(&self, id: i64) -> Result<&LoadPoint, StoreError> {
        match self.get(id, "steps.load_spec")? {
            Part::Load(l) => Ok(l),
            _ => Err(StoreError::BadValue {
                column: "steps.load_spec",
                value: format!("spec {id} (wrong kind)"),
            }),
        }
    }
}

/// Decodes a `specs` row.
fn decode_part(kind: &str, json: &str) -> Result<Part, StoreError> {
    Ok(match kind {
        "model" => Part::Model(decode(json)?),
        "gpu" => Part::Gpu(decode(json)?),
        "framework" => Part::Framework(decode(json)?),
        "quantization" => Part::Quantization(decode(json)?),
        "workload" => Part::Workload(decode(json)?),
        "load" => Part::Load(decode(json)?),
        _ => {
            return Err(StoreError::BadValue {
                column: "specs.kind",
                value: kind.to_owned(),
            });
        }
    })
}

fn decode<T: DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Json {
        action: "decode a configuration part",
        source,
    })
}
