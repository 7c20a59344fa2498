//! Checks of what agents send: each `AgentService` request from the wire, its fields
//! checked against the limits below and converted to the domain types the store takes.
//! A refused field is `INVALID_ARGUMENT` naming the field (a refused result batch is an
//! error text, sent back in its acknowledgement).

use std::collections::HashSet;
use std::time::Duration;

use evalctl_proto::v1 as pb;
use evalctl_results::codec;
use evalctl_results::document::DocumentError;
use tonic::Status;

use super::convert;
use super::status::chain;
use crate::domain::{
    AgentId, AgentRegistration, LeaseId, LeaseRequest, ReleaseReason, ReportedResult, ResultBatch,
    StepId, UnitId,
};

/// Most CPU slots an agent may offer.
const MAX_CPU_SLOTS: u32 = 4096;
/// Largest GPU memory accepted, in GB: far above any device, far below nonsense.
const MAX_GPU_MEMORY_GB: f64 = 100_000.0;
/// Largest epoch, sequence or time the store can hold (SQLite integers are signed 64-bit).
const MAX_STORED_INT: u64 = i64::MAX as u64;

/// Longest id (agent, lease, unit, step) accepted, in bytes.
const MAX_ID_BYTES: usize = 256;
/// Most GPUs an agent may register, and GPU indices it may offer.
const MAX_GPUS: usize = 1024;
/// Most labels or frameworks an agent may register.
const MAX_LABELS: usize = 256;
/// Most warm configurations an `AcquireLease` may name.
const MAX_WARM_CONFIGS: usize = 64;
/// Most leases one heartbeat may report.
const MAX_HEARTBEAT_LEASES: usize = 4096;
/// Most results in one batch.
const MAX_BATCH_RESULTS: usize = 4096;
/// A `Fail` error longer than this is cut (its head is kept), in bytes.
const MAX_ERROR_BYTES: usize = 16 * 1024;
/// A `Fail` log tail longer than this is cut (its end is kept), in bytes.
const MAX_LOG_TAIL_BYTES: usize = 256 * 1024;
/// Records of one result may decompress to at most this many bytes.
const MAX_RECORDS_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Record blobs at least this large are counted on the blocking pool.
const LARGE_RECORDS_BYTES: usize = 256 * 1024;

/// An id field: not empty, not absurdly long.
fn id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is empty"
        )));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is {} bytes long; at most {MAX_ID_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// A repeated field with at most `max` entries.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::invalid_argument(format!(
            "field `{field}` has {len} entries; at most {max}"
        )));
    }
    Ok(())
}

/// The lease and epoch of a fenced call.
pub(crate) fn fenced(lease: &str, epoch: u64) -> Result<(LeaseId, u64), Status> {
    id("lease_id", lease)?;
    epoch_in_range("epoch", epoch)?;
    Ok((LeaseId(lease.to_owned()), epoch))
}

/// An epoch is at least 1 (a lease's first) and fits the store.
fn epoch_in_range(field: &str, epoch: u64) -> Result<(), Status> {
    if epoch == 0 {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is 0; a lease's epoch starts at 1 (hint: send the epoch of the lease)"
        )));
    }
    stored_int(field, epoch)
}

/// An integer the store keeps as a signed 64-bit value.
fn stored_int(field: &str, value: u64) -> Result<(), Status> {
    if value > MAX_STORED_INT {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is {value}; at most {MAX_STORED_INT}"
        )));
    }
    Ok(())
}

/// A GPU's memory: a finite number of GB above 0 and at most [`MAX_GPU_MEMORY_GB`] (a
/// driver reporting garbage must not poison what every reader of agents decodes).
fn gpu_memory(field: &str, memory_gb: f64) -> Result<(), Status> {
    if !memory_gb.is_finite() || memory_gb <= 0.0 || memory_gb > MAX_GPU_MEMORY_GB {
        return Err(Status::invalid_argument(format!(
            "field `{field}` is {memory_gb}; expected a finite number of GB above 0 and at most \
             {MAX_GPU_MEMORY_GB}"
        )));
    }
    Ok(())
}

/// A registration from the wire, checked.
pub(crate) fn registration(req: pb::RegisterRequest) -> Result<AgentRegistration, Status> {
    id("agent_id", &req.agent_id)?;
    for (field, value) in [
        ("hostname", &req.hostname),
        ("version", &req.version),
        ("driver_version", &req.driver_version),
        ("cuda_version", &req.cuda_version),
    ] {
        if value.len() > MAX_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "field `{field}` is {} bytes long; at most {MAX_ID_BYTES}",
                value.len()
            )));
        }
    }
    at_most("gpus", req.gpus.len(), MAX_GPUS)?;
    at_most("labels", req.labels.len(), MAX_LABELS)?;
    at_most("frameworks", req.frameworks.len(), MAX_LABELS)?;
    let mut indices = HashSet::new();
    for gpu in &req.gpus {
        if !indices.insert(gpu.index) {
            return Err(Status::invalid_argument(format!(
                "field `gpus` lists GPU index {} twice",
                gpu.index
            )));
        }
        id("gpus.gpu_type", &gpu.gpu_type)?;
        gpu_memory("gpus.memory_gb", gpu.memory_gb)?;
        if gpu.index as usize >= MAX_GPUS {
            return Err(Status::invalid_argument(format!(
                "field `gpus.index` is {}; at most {}",
                gpu.index,
                MAX_GPUS - 1
            )));
        }
    }
    for (key, value) in &req.labels {
        id("labels", key)?;
        if value.len() > MAX_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "field `labels`: the value of `{key}` is longer than {MAX_ID_BYTES} bytes"
            )));
        }
    }
    for framework in &req.frameworks {
        id("frameworks", framework)?;
    }
    Ok(AgentRegistration {
        id: AgentId(req.agent_id),
        hostname: req.hostname,
        gpus: req.gpus.into_iter().map(convert::agent_gpu).collect(),
        labels: req.labels.into_iter().collect(),
        frameworks: req.frameworks,
        version: req.version,
        driver_version: req.driver_version,
        cuda_version: req.cuda_version,
    })
}

/// An `AcquireLease` request from the wire, checked, with how long it asks to wait for
/// work.
pub(crate) fn lease_request(
    req: pb::AcquireLeaseRequest,
) -> Result<(LeaseRequest, Duration), Status> {
    id("agent_id", &req.agent_id)?;
    at_most("free_gpu_indices", req.free_gpu_indices.len(), MAX_GPUS)?;
    at_most("warm_configs", req.warm_configs.len(), MAX_WARM_CONFIGS)?;
    if let Some(index) = req
        .free_gpu_indices
        .iter()
        .find(|&&i| i as usize >= MAX_GPUS)
    {
        return Err(Status::invalid_argument(format!(
            "field `free_gpu_indices` holds {index}; at most {}",
            MAX_GPUS - 1
        )));
    }
    if req.cpu_slots_free > MAX_CPU_SLOTS {
        return Err(Status::invalid_argument(format!(
            "field `cpu_slots_free` is {}; at most {MAX_CPU_SLOTS}",
            req.cpu_slots_free
        )));
    }
    for warm in &req.warm_configs {
        id("warm_configs", warm)?;
    }
    let lease_request = LeaseRequest {
        agent: AgentId(req.agent_id),
        free_gpu_indices: req.free_gpu_indices,
        warm_configs: req.warm_configs.into_iter().map(UnitId).collect(),
        cpu_slots_free: req.cpu_slots_free,
    };
    Ok((lease_request, Duration::from_millis(req.wait_ms)))
}

/// A heartbeat, checked.
pub(crate) struct Heartbeat {
    /// The agent.
    pub agent: AgentId,
    /// The leases it runs, with their epochs.
    pub leases: Vec<(LeaseId, u64)>,
    /// The agent is draining or being preempted.
    pub draining: bool,
}

/// A `Heartbeat` request from the wire, checked.
pub(crate) fn heartbeat(req: pb::HeartbeatRequest) -> Result<Heartbeat, Status> {
    id("agent_id", &req.agent_id)?;
    at_most("leases", req.leases.len(), MAX_HEARTBEAT_LEASES)?;
    let mut leases = Vec::with_capacity(req.leases.len());
    for progress in req.leases {
        id("leases.lease_id", &progress.lease_id)?;
        epoch_in_range("leases.epoch", progress.epoch)?;
        leases.push((LeaseId(progress.lease_id), progress.epoch));
    }
    Ok(Heartbeat {
        agent: AgentId(req.agent_id),
        leases,
        draining: req.draining,
    })
}

/// A failure report, checked, its texts cut to size.
pub(crate) struct Failure {
    /// The lease.
    pub lease: LeaseId,
    /// Its epoch.
    pub epoch: u64,
    /// The error; one longer than [`MAX_ERROR_BYTES`] is cut to its head.
    pub error: String,
    /// The log tail; one longer than [`MAX_LOG_TAIL_BYTES`] is cut to its end.
    pub log_tail: String,
    /// What kind of failure the agent recognised; a value this coordinator does not know
    /// (a newer agent's) counts as unrecognised.
    pub class: pb::FailureClass,
}

/// A `Fail` request from the wire, checked; an empty error gets a placeholder message.
pub(crate) fn failure(req: pb::FailRequest) -> Result<Failure, Status> {
    let (lease, epoch) = fenced(&req.lease_id, req.epoch)?;
    let error = if req.error.is_empty() {
        "the agent reported a failure without a message".to_owned()
    } else {
        head(&req.error, MAX_ERROR_BYTES)
    };
    let log_tail = tail(&req.log_tail, MAX_LOG_TAIL_BYTES);
    let class = pb::FailureClass::try_from(req.failure_class).unwrap_or_default();
    Ok(Failure {
        lease,
        epoch,
        error,
        log_tail,
        class,
    })
}

/// A `Release` request from the wire, checked: the lease, its epoch and the reason.
pub(crate) fn release(req: pb::ReleaseRequest) -> Result<(LeaseId, u64, ReleaseReason), Status> {
    let (lease, epoch) = fenced(&req.lease_id, req.epoch)?;
    id("reason", &req.reason)?;
    Ok((lease, epoch, ReleaseReason::parse(&req.reason)))
}

/// Why a result batch is not stored.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Sending the batch again cannot help: it is acknowledged as refused, with this text.
    ForGood(String),
    /// This coordinator cannot store it now (a step document of a schema version it does not
    /// know): the stream ends with this status, the agent keeps the batch and sends it again.
    NotNow(Status),
}

impl From<String> for Refusal {
    fn from(text: String) -> Refusal {
        Refusal::ForGood(text)
    }
}

/// A result batch from the wire, checked, with its records counted (which also checks
/// that they are zstd). The error says what is wrong with it, and whether
/// sending it again can help.
pub(crate) async fn result_batch(batch: pb::ResultBatch) -> Result<ResultBatch, Refusal> {
    let field_error = |status: Status| status.message().to_owned();
    id("lease_id", &batch.lease_id).map_err(field_error)?;
    id("unit_id", &batch.unit_id).map_err(field_error)?;
    epoch_in_range("epoch", batch.epoch).map_err(field_error)?;
    stored_int("sequence", batch.sequence).map_err(field_error)?;
    if batch.results.is_empty() {
        return Err(Refusal::ForGood("field `results` is empty".to_owned()));
    }
    at_most("results", batch.results.len(), MAX_BATCH_RESULTS).map_err(field_error)?;
    let mut results = Vec::with_capacity(batch.results.len());
    for result in batch.results {
        id("results.step_id", &result.step_id).map_err(field_error)?;
        if result.finished_at_ms < 0 {
            return Err(Refusal::ForGood(format!(
                "field `results.finished_at_ms` is {}; expected Unix milliseconds (at least 0)",
                result.finished_at_ms
            )));
        }
        let step = result.step_id;
        // A known major version whose fields do not have their shape is refused; a newer
        // minor version is stored as sent. A major version this build does not know ends the
        // stream instead: the agent keeps the batch and sends it again, so a fleet upgraded
        // in the wrong order loses nothing.
        match evalctl_results::check_step_document(&result.result_json) {
            Ok(_) => {}
            Err(err @ DocumentError::UnknownMajor { .. }) => {
                return Err(Refusal::NotNow(Status::failed_precondition(format!(
                    "result of step {step}: field `result_json`: {}",
                    chain(&err)
                ))));
            }
            Err(err) => {
                return Err(Refusal::ForGood(format!(
                    "result of step {step}: field `result_json`: {}",
                    chain(&err)
                )));
            }
        }
        let environment_json = if result.environment_json.is_empty() {
            "{}".to_owned()
        } else if serde_json::from_str::<serde::de::IgnoredAny>(&result.environment_json).is_err() {
            return Err(Refusal::ForGood(format!(
                "result of step {step}: field `environment_json` is not a JSON document"
            )));
        } else {
            result.environment_json
        };
        let (records_zstd, record_count) = count_records(result.records_zstd)
            .await
            .map_err(|e| format!("result of step {step}: field `records_zstd`: {e}"))?;
        let (telemetry_zstd, telemetry_count) = count_records(result.telemetry_zstd)
            .await
            .map_err(|e| format!("result of step {step}: field `telemetry_zstd`: {e}"))?;
        results.push(ReportedResult {
            step_id: StepId(step),
            result_json: result.result_json,
            environment_json,
            records_zstd,
            record_count,
            telemetry_zstd,
            telemetry_count,
            finished_at_ms: result.finished_at_ms,
        });
    }
    Ok(ResultBatch {
        lease: LeaseId(batch.lease_id),
        epoch: batch.epoch,
        unit: UnitId(batch.unit_id),
        attempt: batch.attempt,
        sequence: batch.sequence,
        results,
    })
}

/// Counts the JSON Lines in a zstd blob (0 for an empty blob), large blobs on the
/// blocking pool; an error for a blob that is not zstd.
async fn count_records(blob: Vec<u8>) -> Result<(Vec<u8>, u64), String> {
    if blob.is_empty() {
        return Ok((blob, 0));
    }
    if blob.len() < LARGE_RECORDS_BYTES {
        let count = count_lines(&blob)?;
        return Ok((blob, count));
    }
    tokio::task::spawn_blocking(move || count_lines(&blob).map(|count| (blob, count)))
        .await
        .map_err(|e| format!("failed to count records: {e}"))?
}

/// Counts the JSON Lines in a zstd blob, refusing more than [`MAX_RECORDS_BYTES`].
fn count_lines(blob: &[u8]) -> Result<u64, String> {
    codec::count_lines(blob, MAX_RECORDS_BYTES).map_err(|err| chain(&err))
}

/// The first `max` bytes of `text` (at a character boundary), marked when cut.
fn head(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

/// The last `max` bytes of `text` (at a character boundary), marked when cut.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("({start} bytes cut) …{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_of(text: &str) -> Vec<u8> {
        zstd::encode_all(text.as_bytes(), 3).unwrap()
    }

    #[tokio::test]
    async fn records_are_counted_by_line_and_must_be_zstd() {
        assert_eq!(count_records(Vec::new()).await.unwrap().1, 0);
        assert_eq!(count_records(zstd_of("{}\n{}\n{}\n")).await.unwrap().1, 3);
        assert_eq!(count_records(zstd_of("{}\n{}")).await.unwrap().1, 2);
        let big: String = (0..100_000).map(|i| format!("{{\"i\":{i}}}\n")).collect();
        assert_eq!(count_records(zstd_of(&big)).await.unwrap().1, 100_000);
        let err = count_records(b"{\"not\": \"zstd\"}\n".to_vec())
            .await
            .unwrap_err();
        assert!(err.contains("zstd"), "{err}");
    }

    #[test]
    fn long_texts_are_cut_at_character_boundaries() {
        assert_eq!(head("short", 10), "short");
        assert_eq!(head("ééé", 3), "é… (4 bytes cut)");
        assert_eq!(tail("ééé", 3), "(4 bytes cut) …é");
        assert_eq!(tail("abcdef", 2), "(4 bytes cut) …ef");
    }

    /// Every numeric field of every agent message, over its whole range (NaN and infinities
    /// included): a value is accepted exactly when it is in range, and a refusal is
    /// INVALID_ARGUMENT (or, for a result batch, a refusal for good) naming the field.
    mod numeric_fields {
        use proptest::prelude::*;

        use super::*;

        /// The refusal names `field`.
        fn names(status: &Status, field: &str) -> bool {
            status.code() == tonic::Code::InvalidArgument
                && status.message().contains(&format!("`{field}`"))
        }

        fn register(index: u32, memory_gb: f64) -> Result<AgentRegistration, Status> {
            registration(pb::RegisterRequest {
                agent_id: "a".into(),
                gpus: vec![pb::GpuInfo {
                    index,
                    uuid: "GPU-0".into(),
                    gpu_type: "H100-80GB".into(),
                    name: "NVIDIA H100".into(),
                    memory_gb,
                }],
                ..Default::default()
            })
        }

        const DOCUMENT: &str = "{\"schema\":1,\"simulated\":true,\"step_label\":\"s\",\
            \"connections_opened\":1,\"served_model\":\"m\",\"started_at_ms\":0,\
            \"finished_at_ms\":0}";

        fn batch(
            epoch: u64,
            attempt: u32,
            sequence: u64,
            step_index: u32,
            at: i64,
        ) -> pb::ResultBatch {
            pb::ResultBatch {
                lease_id: "l".into(),
                epoch,
                unit_id: "u".into(),
                attempt,
                sequence,
                results: vec![pb::StepResult {
                    step_id: "s".into(),
                    step_index,
                    result_json: DOCUMENT.into(),
                    finished_at_ms: at,
                    ..Default::default()
                }],
            }
        }

        fn runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime")
        }

        fn any_f64() -> impl Strategy<Value = f64> {
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(0.0),
                Just(-0.0),
                Just(MAX_GPU_MEMORY_GB),
                Just(MAX_GPU_MEMORY_GB * 1.0001),
                -1e6..1e6f64,
                any::<f64>(),
            ]
        }

        fn any_u64() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(0),
                Just(1),
                Just(MAX_STORED_INT),
                Just(MAX_STORED_INT + 1),
                Just(u64::MAX),
                any::<u64>(),
            ]
        }

        proptest! {
            #[test]
            fn register_gpus(index in any::<u32>(), memory_gb in any_f64()) {
                let ok_memory = memory_gb.is_finite() && memory_gb > 0.0 && memory_gb <= MAX_GPU_MEMORY_GB;
                let ok_index = (index as usize) < MAX_GPUS;
                match register(index, memory_gb) {
                    Ok(agent) => {
                        prop_assert!(ok_memory && ok_index);
                        prop_assert_eq!(agent.gpus[0].memory_gb, memory_gb);
                    }
                    Err(status) if !ok_memory => prop_assert!(names(&status, "gpus.memory_gb"), "{status:?}"),
                    Err(status) => prop_assert!(!ok_index && names(&status, "gpus.index"), "{status:?}"),
                }
            }

            #[test]
            fn acquire_lease(free in any::<u32>(), wait_ms in any::<u64>(), slots in any::<u32>()) {
                let request = pb::AcquireLeaseRequest {
                    agent_id: "a".into(),
                    free_gpu_indices: vec![free],
                    wait_ms,
                    cpu_slots_free: slots,
                    ..Default::default()
                };
                match lease_request(request) {
                    Ok((request, wait)) => {
                        prop_assert!((free as usize) < MAX_GPUS && slots <= MAX_CPU_SLOTS);
                        prop_assert_eq!(request.free_gpu_indices, vec![free]);
                        prop_assert_eq!(wait, Duration::from_millis(wait_ms));
                    }
                    Err(status) if (free as usize) >= MAX_GPUS => prop_assert!(names(&status, "free_gpu_indices"), "{status:?}"),
                    Err(status) => prop_assert!(slots > MAX_CPU_SLOTS && names(&status, "cpu_slots_free"), "{status:?}"),
                }
            }

            #[test]
            fn heartbeat_leases(epoch in any_u64(), finished in any::<u32>(), current in any::<u32>()) {
                let request = pb::HeartbeatRequest {
                    agent_id: "a".into(),
                    leases: vec![pb::LeaseProgress {
                        lease_id: "l".into(),
                        epoch,
                        steps_finished: finished,
                        current_step: current,
                    }],
                    ..Default::default()
                };
                let ok = (1..=MAX_STORED_INT).contains(&epoch);
                match heartbeat(request) {
                    Ok(beat) => prop_assert!(ok && beat.leases[0].1 == epoch),
                    Err(status) => prop_assert!(!ok && names(&status, "leases.epoch"), "{status:?}"),
                }
            }

            #[test]
            fn failure_classes(class in any::<i32>()) {
                let request = pb::FailRequest { lease_id: "l".into(), epoch: 1, failure_class: class, ..Default::default() };
                let failure = failure(request).expect("any class is taken");
                match pb::FailureClass::try_from(class) {
                    Ok(known) => prop_assert_eq!(failure.class, known),
                    // A newer agent's class this coordinator does not know: unrecognised.
                    Err(_) => prop_assert_eq!(failure.class, pb::FailureClass::Unspecified),
                }
            }

            #[test]
            fn complete_fail_and_release_epochs(epoch in any_u64()) {
                let ok = (1..=MAX_STORED_INT).contains(&epoch);
                let outcomes = [
                    fenced("l", epoch).map(|_| ()),
                    failure(pb::FailRequest { lease_id: "l".into(), epoch, ..Default::default() }).map(|_| ()),
                    release(pb::ReleaseRequest { lease_id: "l".into(), epoch, reason: "shutdown".into() }).map(|_| ()),
                ];
                for outcome in outcomes {
                    match outcome {
                        Ok(()) => prop_assert!(ok),
                        Err(status) => prop_assert!(!ok && names(&status, "epoch"), "{status:?}"),
                    }
                }
            }

            #[test]
            fn result_batches(
                epoch in any_u64(),
                attempt in any::<u32>(),
                sequence in any_u64(),
                step_index in any::<u32>(),
                at in prop_oneof![Just(-1i64), Just(0i64), Just(i64::MIN), Just(i64::MAX), any::<i64>()],
            ) {
                let outcome = runtime().block_on(result_batch(batch(epoch, attempt, sequence, step_index, at)));
                let epoch_ok = (1..=MAX_STORED_INT).contains(&epoch);
                let sequence_ok = sequence <= MAX_STORED_INT;
                match outcome {
                    Ok(batch) => {
                        prop_assert!(epoch_ok && sequence_ok && at >= 0);
                        prop_assert_eq!((batch.epoch, batch.attempt, batch.sequence), (epoch, attempt, sequence));
                        prop_assert_eq!(batch.results[0].finished_at_ms, at);
                    }
                    Err(Refusal::ForGood(text)) => {
                        let field = if !epoch_ok { "`epoch`" } else if !sequence_ok { "`sequence`" } else { "`results.finished_at_ms`" };
                        prop_assert!(text.contains(field), "{text}");
                        prop_assert!(!(epoch_ok && sequence_ok && at >= 0), "{text}");
                    }
                    Err(Refusal::NotNow(status)) => prop_assert!(false, "{status:?}"),
                }
            }
        }
    }
}
