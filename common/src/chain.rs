//! An error and its `source` chain as one line, for logs, gRPC statuses and stored failures.

/// "outer: inner: innermost", each message once.
///
/// A cause whose text the line already holds is left out: some errors (libloading's, and
/// wrappers that format their source) repeat their own source in their message.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, &text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn joins_every_cause_in_order() {
        let err = layers(&["failed to open `x`", "permission denied"]);
        assert_eq!(error_chain(&err), "failed to open `x`: permission denied");
        assert_eq!(error_chain(&layers(&["alone"])), "alone");
    }

    #[test]
    fn a_cause_the_message_already_repeats_is_said_once() {
        let err = layers(&["failed to load libx: no such file", "no such file"]);
        assert_eq!(error_chain(&err), "failed to load libx: no such file");
    }
}
