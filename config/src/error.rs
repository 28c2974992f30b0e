//! The configuration error: where the problem is (file, line, column), what is wrong,
//! and how to fix it, rendered like a compiler diagnostic.

use std::fmt;
use std::io;
use std::ops::Range;

/// The broad class of a configuration problem, for callers that react differently to
/// different problems (tests, `vdpactl add`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A key that the schema does not know.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value has the wrong TOML type (for example a string where a number belongs).
    WrongType,
    /// A value is malformed or out of range.
    InvalidValue,
    /// Settings that contradict each other (for example `tap_name` without a tap backend).
    Conflict,
    /// A device name or socket path that is already taken.
    Duplicate,
    /// A user or group name that does not exist on this host.
    UnknownId,
}

/// Where in the text an error points: 1-based line and column, plus what is needed to
/// draw the source line with a caret under the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    line: usize,
    column: usize,
    line_text: String,
    /// Number of characters to underline, at least one.
    width: usize,
}

/// A configuration problem, located in its file whenever the problem has a location.
///
/// `Display` renders a diagnostic for a human:
///
/// ```text
/// vdpad.toml:12:14: error: queue_size = 300 is not a power of two
///   help: use a power of two between 2 and 32768, e.g. 256
///    |
/// 12 | queue_size = 300
///    |              ^^^
/// ```
///
/// The first line always has the form `FILE:LINE:COLUMN: error: MESSAGE` (or
/// `FILE: error: MESSAGE` when there is no position, e.g. a missing file); a `help:`
/// line follows when there is a fix to suggest.
///
/// For I/O errors the operating system's reason is part of the message, so
/// [`std::error::Error::source`] returns `None` (nothing is printed twice by error
/// reporters that walk the chain); the underlying error is available from
/// [`ConfigError::io_error`].
#[derive(Debug)]
pub struct ConfigError {
    // Boxed: errors travel through every validation step's `Result`, which should stay
    // small.
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    file: String,
    position: Option<Position>,
    message: String,
    help: Option<String>,
    io: Option<io::Error>,
}

impl ConfigError {
    /// A problem without a position in the text (I/O errors, conflicts between whole
    /// configurations).
    pub(crate) fn unlocated(kind: ErrorKind, file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            inner: Box::new(Inner {
                kind,
                file: file.to_owned(),
                position: None,
                message: message.into(),
                help: None,
                io: None,
            }),
        }
    }

    /// The file could not be read.
    pub(crate) fn io(file: &str, what: &str, err: io::Error) -> Self {
        let mut e = Self::unlocated(ErrorKind::Io, file, format!("{what}: {err}"));
        e.inner.io = Some(err);
        e
    }

    /// Adds a `help:` line that says how to fix the problem.
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.inner.help = Some(help.into());
        self
    }

    /// The class of problem.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The file (or origin name, e.g. `<embedded default>`) the error is about.
    pub fn file(&self) -> &str {
        &self.inner.file
    }

    /// 1-based line of the offending text, if the error has a position.
    pub fn line(&self) -> Option<usize> {
        self.inner.position.as_ref().map(|p| p.line)
    }

    /// 1-based column (in characters) of the offending text, if the error has a
    /// position.
    pub fn column(&self) -> Option<usize> {
        self.inner.position.as_ref().map(|p| p.column)
    }

    /// What is wrong, without location or help.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// How to fix it, if there is a suggestion.
    pub fn help(&self) -> Option<&str> {
        self.inner.help.as_deref()
    }

    /// The underlying I/O error, for [`ErrorKind::Io`].
    pub fn io_error(&self) -> Option<&io::Error> {
        self.inner.io.as_ref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.position {
            Some(p) => write!(f, "{}:{}:{}: ", self.inner.file, p.line, p.column)?,
            None => write!(f, "{}: ", self.inner.file)?,
        }
        write!(f, "error: {}", self.inner.message)?;
        if let Some(help) = &self.inner.help {
            write!(f, "\n  help: {help}")?;
        }
        if let Some(p) = &self.inner.position {
            let gutter = p.line.to_string().len();
            let pad = " ".repeat(gutter);
            // Keep tabs in the caret line so the caret stays under the column.
            let indent: String = p
                .line_text
                .chars()
                .take(p.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n{pad} |")?;
            write!(f, "\n{} | {}", p.line, p.line_text)?;
            write!(f, "\n{pad} | {indent}{}", "^".repeat(p.width))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The text being parsed and its name, so that byte spans can become file:line:column
/// errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source<'a> {
    /// File path or a name like `<snippet>`.
    pub origin: &'a str,
    /// The whole TOML text.
    pub text: &'a str,
}

impl<'a> Source<'a> {
    /// Creates the context for `text`, named `origin` in errors.
    pub fn new(origin: &'a str, text: &'a str) -> Self {
        Source { origin, text }
    }

    /// An error pointing at the byte range `span` of the text.
    pub fn error(
        &self,
        kind: ErrorKind,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let mut e = ConfigError::unlocated(kind, self.origin, message);
        e.inner.position = Some(self.position(span));
        e
    }

    /// `file:line:column` of the start of `span`, to name another place in an error.
    pub fn location(&self, span: Range<usize>) -> String {
        let p = self.position(span);
        format!("{}:{}:{}", self.origin, p.line, p.column)
    }

    /// Converts a byte range into a 1-based line and column and the line's text.
    fn position(&self, span: Range<usize>) -> Position {
        let text = self.text;
        let mut start = span.start.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let line = text[..line_start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        // A span can start just past the line's trailing '\r', which `line_text`
        // drops: the upper bound must not fall below `start`.
        let end = span
            .end
            .clamp(start, (line_start + line_text.len()).max(start));
        let width = text.get(start..end).map_or(0, |s| s.chars().count()).max(1);
        Position {
            line,
            column,
            line_text: line_text.to_owned(),
            width,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, span: Range<usize>) -> ConfigError {
        Source::new("f.toml", text).error(ErrorKind::InvalidValue, span, "bad")
    }

    /// Found by the config_toml fuzz target: an error just past a line's trailing
    /// '\r' (at the end of the text, or on the '\n' of a CRLF) made `position` panic
    /// in `clamp`, so loading such a file crashed instead of reporting the error.
    #[test]
    fn span_after_a_trailing_carriage_return() {
        let e = at("x = 0\r", 6..6);
        assert_eq!((e.line(), e.column()), (Some(1), Some(7)));
        let e = at("a = 1\r\nb = 2\r\n", 6..7);
        assert_eq!((e.line(), e.column()), (Some(1), Some(7)));
        let _ = e.to_string();
    }

    #[test]
    fn position_is_one_based_line_and_column() {
        let text = "a = 1\nqueue_size = 300\n";
        let start = text.find("300").unwrap();
        let e = at(text, start..start + 3);
        assert_eq!((e.line(), e.column()), (Some(2), Some(14)));
    }

    #[test]
    fn column_counts_characters_not_bytes() {
        let text = "# é\nname = \"ü\" x\n";
        let start = text.find('x').unwrap();
        let e = at(text, start..start + 1);
        assert_eq!((e.line(), e.column()), (Some(2), Some(12)));
    }

    #[test]
    fn span_at_end_of_text_is_clamped() {
        let text = "a = ";
        let e = at(text, 4..4);
        assert_eq!((e.line(), e.column()), (Some(1), Some(5)));
        assert!(e.to_string().ends_with("|     ^"), "{e}");
    }

    #[test]
    fn display_has_location_help_and_caret() {
        let text = "[[device]]\nqueue_size = 300\n";
        let start = text.find("300").unwrap();
        let e = Source::new("vdpad.toml", text)
            .error(
                ErrorKind::InvalidValue,
                start..start + 3,
                "queue_size = 300 is not a power of two",
            )
            .with_help("use a power of two between 2 and 32768, e.g. 256");
        let expected = "vdpad.toml:2:14: error: queue_size = 300 is not a power of two\n  \
                        help: use a power of two between 2 and 32768, e.g. 256\n  |\n\
                        2 | queue_size = 300\n  |              ^^^";
        assert_eq!(e.to_string(), expected);
    }

    #[test]
    fn caret_keeps_tabs_and_crlf_is_trimmed() {
        let text = "\tmtu = 9\r\n";
        let start = text.find('9').unwrap();
        let e = at(text, start..start + 1);
        let rendered = e.to_string();
        assert!(rendered.contains("1 | \tmtu = 9\n"), "{rendered:?}");
        assert!(rendered.ends_with("  | \t      ^"), "{rendered:?}");
    }

    #[test]
    fn io_error_names_file_without_position() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        let e = ConfigError::io("/etc/vdpad/x.toml", "cannot read configuration file", err);
        assert_eq!(e.kind(), ErrorKind::Io);
        assert_eq!(e.line(), None);
        assert!(e
            .to_string()
            .starts_with("/etc/vdpad/x.toml: error: cannot read configuration file: "));
        assert!(e.io_error().is_some());
    }
}
