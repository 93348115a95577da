//! Errors on one line, for people and logs: the layers under tonic (hyper, h2, the
//! socket) each add their own error, and tonic's Display shows only the top one
//! ("transport error") or, for a status, a dump of its metadata.

/// An error and its sources on one line (tonic's own Display says only "transport error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    append_sources(&mut line, error.source());
    line
}

/// Appends each source's text that `line` does not already say (layers often
/// repeat the layer below).
pub fn append_sources(line: &mut String, mut source: Option<&dyn std::error::Error>) {
    while let Some(inner) = source {
        let text = inner.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        source = inner.source();
    }
}

/// A gRPC status on one line: its message and the errors under it.
pub fn status_line(status: &tonic::Status) -> String {
    let mut line = status.message().to_string();
    append_sources(&mut line, std::error::Error::source(status));
    if line.is_empty() {
        line = format!("{:?}", status.code());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn sources_are_joined_once_each() {
        let error = Layer("transport error", Some(Box::new(Layer("tcp connect error", Some(Box::new(Layer("tcp connect error", None)))))));
        assert_eq!(error_chain(&error), "transport error: tcp connect error");
        let status = tonic::Status::unavailable("");
        assert_eq!(status_line(&status), "Unavailable");
    }
}
