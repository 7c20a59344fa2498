//! A framework's image: making sure the host has it (the pull phase, by the framework's
//! pull policy), and what exactly it is (digest and id), for the step's environment.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use evalctl_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::{CLI_TIMEOUT, CliError, Runtime};
use crate::launcher::{append_log_line, read_tail};

/// How much of a failed pull's output an error carries.
const PULL_TAIL_BYTES: usize = 2048;

/// What exactly an image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIdentity {
    /// The image id (`sha256:…`): the local identity of its content.
    pub id: String,
    /// The registry digest (`sha256:…`) of the image as pulled, when it has one (images
    /// built or imported locally may not).
    pub digest: Option<String>,
}

/// Why the host does not have the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `pull: never` and the host does not have it.
    #[error("image `{image}` is not on this host, and its pull policy is `never`")]
    Missing {
        /// The image.
        image: String,
    },
    /// The pull failed.
    #[error("failed to pull image `{image}` ({status}): {cause}")]
    Pull {
        /// The image.
        image: String,
        /// The pull's exit status.
        status: std::process::ExitStatus,
        /// The runtime's last line (the whole output is in the server log).
        cause: String,
    },
    /// The pull outlived its timeout (and was stopped).
    #[error("pulling image `{image}` did not finish within {} (the framework's `container.pull_timeout`)", humantime::format_duration(*.timeout))]
    PullTimeout {
        /// The image.
        image: String,
        /// The limit.
        timeout: Duration,
    },
    /// The pull could not be started, or its output not logged.
    #[error("failed to pull image `{image}`")]
    PullIo {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Inspecting the image failed.
    #[error("failed to inspect image `{image}`")]
    Inspect {
        /// The image.
        image: String,
        /// The cause.
        #[source]
        source: CliError,
    },
    /// The agent stopped the launch.
    #[error("the pull of image `{image}` was cancelled")]
    Cancelled {
        /// The image.
        image: String,
    },
}

/// Makes sure the host has `image` by `policy`: `always` pulls, `if-missing` pulls when
/// `image inspect` does not find it, `never` fails when it does not. A pull appends its
/// progress to `log_path` between header lines, and is stopped after `timeout` or when
/// `cancel` fires.
pub async fn ensure(
    runtime: &Runtime,
    image: &str,
    policy: pb::PullPolicy,
    timeout: Duration,
    log_path: &Path,
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    let pull = match policy {
        pb::PullPolicy::Always => true,
        pb::PullPolicy::Never => {
            if !present(runtime, image).await? {
                return Err(ImageError::Missing {
                    image: image.to_owned(),
                });
            }
            false
        }
        pb::PullPolicy::IfMissing | pb::PullPolicy::Unspecified => !present(runtime, image).await?,
    };
    if pull {
        self::pull(runtime, image, timeout, log_path, cancel).await?;
    }
    Ok(())
}

/// Whether the host has `image`. A failing `inspect` means it does not, unless the runtime
/// itself is in trouble (a timeout, a CLI that cannot run).
async fn present(runtime: &Runtime, image: &str) -> Result<bool, ImageError> {
    match runtime
        .output(
            &["image", "inspect", "--format", "{{.Id}}", image],
            CLI_TIMEOUT,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(CliError::Failed { .. }) => Ok(false),
        Err(source) => Err(ImageError::Inspect {
            image: image.to_owned(),
            source,
        }),
    }
}

async fn pull(
    runtime: &Runtime,
    image: &str,
    timeout: Duration,
    log_path: &Path,
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    let io = |source| ImageError::PullIo {
        image: image.to_owned(),
        source,
    };
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    append_log_line(
        log_path,
        &format!(
            "pulling image {image} (timeout {})",
            humantime::format_duration(timeout)
        ),
    );
    let log = OpenOptions::new().append(true).open(log_path).map_err(io)?;
    let start_offset = log.metadata().map_err(io)?.len();
    tracing::info!(image, log = %log_path.display(), "pulling the image");
    let started = Instant::now();
    let mut cmd = runtime.command(&["pull", image]);
    cmd.stdout(Stdio::from(log.try_clone().map_err(io)?))
        .stderr(Stdio::from(log.try_clone().map_err(io)?));
    let mut child = cmd.spawn().map_err(io)?;
    let status = tokio::select! {
        () = cancel.cancelled() => {
            let _ = child.kill().await;
            append_log_line(log_path, "pull cancelled");
            return Err(ImageError::Cancelled { image: image.to_owned() });
        }
        () = tokio::time::sleep(timeout) => {
            let _ = child.kill().await;
            append_log_line(log_path, "pull timed out");
            return Err(ImageError::PullTimeout { image: image.to_owned(), timeout });
        }
        status = child.wait() => status.map_err(io)?,
    };
    if !status.success() {
        append_log_line(log_path, &format!("pull failed ({status})"));
        let written = log.metadata().map_or(0, |m| m.len()) - start_offset;
        let output = read_tail(log_path, PULL_TAIL_BYTES.min(written as usize)).unwrap_or_default();
        // The runtime's last word, not evalctl's own lines around it.
        let cause = output
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with("==> "))
            .unwrap_or("no output");
        return Err(ImageError::Pull {
            image: image.to_owned(),
            status,
            cause: cause.to_owned(),
        });
    }
    let took = Duration::from_millis(started.elapsed().as_millis() as u64);
    append_log_line(
        log_path,
        &format!("pulled {image} in {}", humantime::format_duration(took)),
    );
    tracing::info!(image, took = %humantime::format_duration(took), "image pulled");
    Ok(())
}

/// The image's id and registry digest.
pub async fn identity(runtime: &Runtime, image: &str) -> Result<ImageIdentity, ImageError> {
    let inspect_error = |source| ImageError::Inspect {
        image: image.to_owned(),
        source,
    };
    let out = runtime
        .output(
            &[
                "image",
                "inspect",
                "--format",
                "{{.Id}} {{json .RepoDigests}}",
                image,
            ],
            CLI_TIMEOUT,
        )
        .await
        .map_err(inspect_error)?;
    Ok(parse_identity(out.trim(), image))
}

/// Reads `<id> <json list of repo@digest>`: Docker writes the id with its `sha256:`, Podman
/// without; the digest preferred is the one of the image's own repository.
fn parse_identity(line: &str, image: &str) -> ImageIdentity {
    let (id, digests) = line.split_once(' ').unwrap_or((line, "[]"));
    let id = if id.contains(':') {
        id.to_owned()
    } else {
        format!("sha256:{id}")
    };
    let digests: Vec<String> = serde_json::from_str(digests).unwrap_or_default();
    let repository = image
        .split('@')
        .next()
        .unwrap_or(image)
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or(image, |(repo, _)| repo);
    let digest = digests
        .iter()
        .find(|d| d.split('@').next().is_some_and(|r| r.ends_with(repository)))
        .or_else(|| digests.first())
        .and_then(|d| d.split_once('@'))
        .map(|(_, digest)| digest.to_owned());
    ImageIdentity { id, digest }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_prefers_the_images_own_repository_and_normalises_the_id() {
        let podman = parse_identity(
            "5a92d9 [\"docker.io/other/x@sha256:111\",\"docker.io/vllm/vllm-openai@sha256:222\"]",
            "vllm/vllm-openai:v0.11.0",
        );
        assert_eq!(podman.id, "sha256:5a92d9");
        assert_eq!(podman.digest.as_deref(), Some("sha256:222"));
        let docker_local = parse_identity("sha256:abc []", "localhost/evalctl-sim:test");
        assert_eq!(docker_local.id, "sha256:abc");
        assert_eq!(docker_local.digest, None);
        let registry_port = parse_identity(
            "sha256:abc [\"reg:5000/team/img@sha256:333\"]",
            "reg:5000/team/img",
        );
        assert_eq!(registry_port.digest.as_deref(), Some("sha256:333"));
    }
}
