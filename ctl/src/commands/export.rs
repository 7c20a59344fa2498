//! `evalctl export CAMPAIGN -o FILE`: every stored step of a campaign as one row (unit
//! configuration, workload, load point, every metric, telemetry), or with `--requests`
//! every per-request record, as CSV, JSON Lines or Parquet. Rows are written as the
//! coordinator streams its result pages, so memory stays flat however large the campaign;
//! the file appears under its name only once complete.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use evalctl_proto::v1 as pb;
use evalctl_results::codec::decode_records;
use evalctl_results::{Environment, StepDocument};
use futures::StreamExt;

use crate::analysis::cost::Prices;
use crate::cli::GlobalArgs;
use crate::client;
use crate::error::CliError;
use crate::export::{self, ExportError, Format, RowBuilder, requests, scores, steps};
use crate::render;

/// `evalctl export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: crate::cli::ConnectionArgs,
    /// Campaign name or id.
    pub campaign: String,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// File format [default: from the file extension: .csv, .jsonl/.ndjson, .parquet].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// One row per request record instead of one per step.
    #[arg(long, conflicts_with = "scores")]
    pub requests: bool,
    /// One row per accuracy score of a harness step (task, metric, filter, value, standard
    /// error) instead of one per step.
    #[arg(long)]
    pub scores: bool,
    /// GPU prices (docs/results.md) for the cost columns; the matrix's prices otherwise.
    #[arg(long, value_name = "FILE")]
    pub cost_file: Option<PathBuf>,
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    /// The file.
    pub file: PathBuf,
    /// "csv", "jsonl" or "parquet".
    pub format: &'static str,
    /// "steps", "requests" or "scores".
    pub rows_kind: &'static str,
    /// Rows written.
    pub rows: u64,
    /// Step results read.
    pub steps: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// Runs `evalctl export`.
pub async fn run(global: &GlobalArgs, args: &ExportArgs) -> Result<ExitCode, CliError> {
    let format = match args.format {
        Some(f) => f,
        None => format_from_extension(&args.output).ok_or_else(|| CliError::BadFlag {
            flag: "--format",
            source: format!(
                "cannot tell the format of `{}` from its extension",
                args.output.display()
            )
            .into(),
        })?,
    };
    let prices = match &args.cost_file {
        Some(path) => Prices::load(path).map_err(CliError::Prices)?,
        None => Prices::none(),
    };
    let mut client = client::connect(&global.coordinator).await?;
    let summary = export(&mut client, &args.campaign, args, format, &prices).await?;
    if global.json {
        render::emit_json(&summary)?;
    } else {
        eprintln!(
            "wrote {} {} rows ({} steps) to {} in {:.1} s",
            summary.rows,
            summary.rows_kind,
            summary.steps,
            summary.file.display(),
            summary.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The format a file name implies.
pub fn format_from_extension(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "csv" => Some(Format::Csv),
        "jsonl" | "ndjson" => Some(Format::Jsonl),
        "parquet" | "pq" => Some(Format::Parquet),
        _ => None,
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Csv => "csv",
        Format::Jsonl => "jsonl",
        Format::Parquet => "parquet",
    }
}

/// A file written beside its destination and renamed over it when complete, removed when
/// dropped before that.
struct PartialFile {
    partial: PathBuf,
    done: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

async fn export(
    client: &mut client::Client,
    campaign: &str,
    args: &ExportArgs,
    format: Format,
    prices: &Prices,
) -> Result<ExportSummary, CliError> {
    let started = Instant::now();
    let failed = |source: ExportError| CliError::Export {
        campaign: campaign.to_owned(),
        path: args.output.clone(),
        source,
    };
    // Results carry the campaign's id; rows name it too.
    let name = client
        .get_campaign(pb::GetCampaignRequest {
            campaign: campaign.to_owned(),
        })
        .await
        .map_err(CliError::rpc("get campaign"))?
        .into_inner()
        .campaign
        .map(|c| c.name)
        .unwrap_or_else(|| campaign.to_owned());
    let mut stream = client
        .results(pb::ResultsRequest {
            campaign: campaign.to_owned(),
            include_records: args.requests,
        })
        .await
        .map_err(CliError::rpc("results"))?
        .into_inner();
    let mut partial_name = args.output.clone().into_os_string();
    partial_name.push(".partial");
    let mut partial = PartialFile {
        partial: PathBuf::from(partial_name),
        done: false,
    };
    let columns = if args.requests {
        requests::columns()
    } else if args.scores {
        scores::columns()
    } else {
        steps::columns()
    };
    let mut sink = export::create(format, &partial.partial, &columns).map_err(failed)?;
    let mut row = RowBuilder::default();
    let (mut rows, mut step_count) = (0u64, 0u64);
    while let Some(result) = stream.next().await {
        let result = result.map_err(CliError::rpc("results"))?;
        step_count += 1;
        if args.requests {
            let context = requests::StepContext::of(&name, &result);
            if result.records_zstd.is_empty() {
                continue;
            }
            let records =
                decode_records(&result.records_zstd).map_err(|source| CliError::BadRecords {
                    step_id: result.step_id.clone(),
                    source,
                })?;
            for record in &records {
                row.clear();
                requests::build(&context, record, &mut row);
                sink.write_row(row.values()).map_err(failed)?;
                rows += 1;
            }
        } else if args.scores {
            let document = crate::analysis::points::document(&result)?;
            let context = requests::StepContext::of(&name, &result);
            let step = scores::ScoredStep::of(&context, &result, &document);
            for score in document.scores() {
                row.clear();
                scores::build(step, &score, &mut row);
                sink.write_row(row.values()).map_err(failed)?;
                rows += 1;
            }
        } else {
            let document: StepDocument =
                serde_json::from_str(&result.result_json).map_err(|source| {
                    CliError::BadResult {
                        step_id: result.step_id.clone(),
                        source,
                    }
                })?;
            let environment: Option<Environment> =
                serde_json::from_str(&result.environment_json).ok();
            let gpu = result
                .unit
                .as_ref()
                .and_then(|u| u.gpu.clone())
                .unwrap_or_default();
            row.clear();
            steps::build(
                steps::StepInput {
                    campaign_name: &name,
                    result: &result,
                    document: &document,
                    environment: environment.as_ref(),
                    price_per_gpu_hour: prices.per_gpu_hour(&gpu.gpu_type, gpu.price_per_hour),
                },
                &mut row,
            );
            sink.write_row(row.values()).map_err(failed)?;
            rows += 1;
        }
    }
    sink.finish().map_err(failed)?;
    std::fs::rename(&partial.partial, &args.output).map_err(|source| CliError::Write {
        path: args.output.clone(),
        source,
    })?;
    partial.done = true;
    Ok(ExportSummary {
        file: args.output.clone(),
        format: format_name(format),
        rows_kind: if args.requests {
            "requests"
        } else if args.scores {
            "scores"
        } else {
            "steps"
        },
        rows,
        steps: step_count,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_extensions() {
        assert_eq!(
            format_from_extension(Path::new("a/b.CSV")),
            Some(Format::Csv)
        );
        assert_eq!(
            format_from_extension(Path::new("x.ndjson")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            format_from_extension(Path::new("x.parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(format_from_extension(Path::new("x")), None);
    }
}
