//! `TokenService.ListAudit`: the audit log, filtered on the server and sent one bounded
//! page at a time (operator only; the authorization layer checks that before a call gets
//! here).

use evalctl_proto::v1 as pb;
use tonic::Status;

use super::status::store_error;
use crate::limits::{self, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE};
use crate::store::{AuditEntry, AuditFilter, AuditPage, Store};

/// Checks a request and turns it into the store's filter: empty strings and zeros mean
/// "no bound", the page size is capped at [`MAX_AUDIT_PAGE`].
pub(crate) fn filter(req: pb::ListAuditRequest) -> Result<AuditFilter, Status> {
    limits::short_field("actor", &req.actor)?;
    limits::short_field("action", &req.action)?;
    let bound = |field: &str, value: i64| {
        if value < 0 {
            Err(Status::invalid_argument(format!(
                "field `{field}` is {value}: expected Unix milliseconds, or 0 for no bound"
            )))
        } else {
            Ok((value > 0).then_some(value))
        }
    };
    let since_ms = bound("since_ms", req.since_ms)?;
    let until_ms = bound("until_ms", req.until_ms)?;
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since > until
    {
        return Err(Status::invalid_argument(format!(
            "field `since_ms` ({since}) is after `until_ms` ({until}): expected since <= until"
        )));
    }
    if req.before_id < 0 {
        return Err(Status::invalid_argument(format!(
            "field `before_id` is {}: expected the `next_before_id` of a previous page, or 0",
            req.before_id
        )));
    }
    let limit = match usize::try_from(req.limit).unwrap_or(usize::MAX) {
        0 => DEFAULT_AUDIT_PAGE,
        asked => asked.min(MAX_AUDIT_PAGE),
    };
    Ok(AuditFilter {
        actor: (!req.actor.is_empty()).then_some(req.actor),
        action: (!req.action.is_empty()).then_some(req.action),
        since_ms,
        until_ms,
        before_id: (req.before_id > 0).then_some(req.before_id),
        limit,
    })
}

fn entry(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        audit_id: e.audit_id,
        at_ms: e.at_ms,
        actor: e.actor,
        action: e.action,
        target: e.target,
        detail_json: e.detail,
    }
}

/// Answers one `ListAudit` call.
pub(crate) async fn list(
    store: &Store,
    req: pb::ListAuditRequest,
) -> Result<pb::ListAuditResponse, Status> {
    let AuditPage {
        entries,
        next_before_id,
    } = store.audit_page(filter(req)?).await.map_err(store_error)?;
    Ok(pb::ListAuditResponse {
        entries: entries.into_iter().map(entry).collect(),
        next_before_id: next_before_id.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_are_no_bounds_and_the_page_is_capped() {
        let all = filter(pb::ListAuditRequest::default()).unwrap();
        assert_eq!(
            all,
            AuditFilter {
                limit: DEFAULT_AUDIT_PAGE,
                ..AuditFilter::default()
            }
        );
        let some = filter(pb::ListAuditRequest {
            actor: "ci".into(),
            action: "submit".into(),
            since_ms: 10,
            until_ms: 20,
            limit: 1_000_000,
            before_id: 7,
        })
        .unwrap();
        assert_eq!(
            some,
            AuditFilter {
                actor: Some("ci".into()),
                action: Some("submit".into()),
                since_ms: Some(10),
                until_ms: Some(20),
                before_id: Some(7),
                limit: MAX_AUDIT_PAGE,
            }
        );
    }

    #[test]
    fn bad_bounds_are_refused_naming_the_field() {
        let cases = [
            (
                pb::ListAuditRequest {
                    since_ms: -1,
                    ..Default::default()
                },
                "since_ms",
            ),
            (
                pb::ListAuditRequest {
                    until_ms: -5,
                    ..Default::default()
                },
                "until_ms",
            ),
            (
                pb::ListAuditRequest {
                    since_ms: 20,
                    until_ms: 10,
                    ..Default::default()
                },
                "since_ms",
            ),
            (
                pb::ListAuditRequest {
                    before_id: -1,
                    ..Default::default()
                },
                "before_id",
            ),
            (
                pb::ListAuditRequest {
                    actor: "x".repeat(300),
                    ..Default::default()
                },
                "actor",
            ),
        ];
        for (request, field) in cases {
            let status = filter(request).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(&format!("`{field}`")),
                "{field}: {}",
                status.message()
            );
        }
    }
}
