//! `evalctl report CAMPAIGN -o report.html`: reads the campaign, its units, dropped
//! combinations and step results from the coordinator and writes the self-contained HTML
//! report of `crate::report`.

use std::path::PathBuf;
use std::process::ExitCode;

use evalctl_proto::v1 as pb;

use crate::analysis::cost::Prices;
use crate::analysis::{accuracy, capacity, points};
use crate::cli::GlobalArgs;
use crate::client;
use crate::error::CliError;
use crate::render;
use crate::report::{self, ReportData};

/// `evalctl report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// How to reach the coordinator.
    #[command(flatten)]
    pub connection: crate::cli::ConnectionArgs,
    /// Campaign name or id.
    pub campaign: String,
    /// Output HTML file.
    #[arg(short = 'o', long = "output", default_value = "report.html")]
    pub output: PathBuf,
    /// GPU prices (docs/results.md) for the cost section; the matrix's prices otherwise.
    #[arg(long, value_name = "FILE")]
    pub cost_file: Option<PathBuf>,
}

/// Runs `evalctl report`.
pub async fn run(global: &GlobalArgs, args: &ReportArgs) -> Result<ExitCode, CliError> {
    let prices = match &args.cost_file {
        Some(path) => Prices::load(path).map_err(CliError::Prices)?,
        None => Prices::none(),
    };
    let mut client = client::connect(&global.coordinator).await?;
    let data = fetch(&mut client, &args.campaign, prices).await?;
    let page = report::render(&data);
    write_atomically(&args.output, page.as_bytes())?;
    if global.json {
        render::emit_json(&serde_json::json!({
            "file": args.output,
            "bytes": page.len(),
            "steps": data.points.len(),
            "units": data.units.len(),
            "capacity_searches": data.capacities.len(),
        }))?;
    } else {
        eprintln!(
            "wrote {} ({} KiB; {} units, {} measured steps)",
            args.output.display(),
            page.len().div_ceil(1024),
            data.units.len(),
            data.points.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads what the report shows.
pub async fn fetch(
    client: &mut client::Client,
    campaign: &str,
    prices: Prices,
) -> Result<ReportData, CliError> {
    let info = client
        .get_campaign(pb::GetCampaignRequest {
            campaign: campaign.to_owned(),
        })
        .await
        .map_err(CliError::rpc("get campaign"))?
        .into_inner();
    let units = client
        .list_units(pb::ListUnitsRequest {
            campaign: campaign.to_owned(),
        })
        .await
        .map_err(CliError::rpc("list units"))?
        .into_inner()
        .units;
    let measured = points::fetch_measured(client, campaign, &prices).await?;
    let capacities = capacity::capacities(&measured.searches, &measured.points);
    let accuracy = accuracy::by_deployment(&measured.scores);
    let (points, starts) = (measured.points, measured.starts);
    Ok(ReportData {
        series: info.series.as_ref().map(crate::render::SeriesJson::from),
        campaign: info.campaign.unwrap_or_default(),
        dropped: info.dropped,
        units,
        points,
        capacities,
        accuracy,
        starts,
        prices,
        generated_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    })
}

/// Writes `bytes` to a sibling file and renames it over `path`, so a reader never sees
/// half a file.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, path));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&partial);
        CliError::Write {
            path: path.to_owned(),
            source,
        }
    })
}
