//! Connection to the coordinator's `CampaignService`.

use std::time::Duration;

use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;

/// Largest message the CLI accepts (a campaign with many units comes back in one reply).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connected campaign client.
pub type Client = CampaignServiceClient<Channel>;

/// Connects to `url`, failing fast with a clear error when nothing listens there.
pub async fn connect(url: &str) -> Result<Client, CliError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| CliError::BadUrl {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CliError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
    Ok(CampaignServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
