//! Configuration: the YAML schema (`schema`), unit parsing (`units`), and
//! error reporting that names the file, line, column and field (`locate`).
//!
//! `load` only parses; turning a `Config` into the running gateway (and the
//! semantic checks that come with it) is `crate::live::build`.

pub mod locate;
pub mod schema;
pub mod units;

pub use schema::*;

use locate::Positions;
use std::fmt;

/// A configuration error pointing at the offending spot.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub field: String,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ConfigError {}

/// A parsed configuration together with where each field came from.
pub struct Loaded {
    pub file: String,
    pub cfg: Config,
    pub pos: Positions,
}

impl Loaded {
    /// An error about the field at `path` (e.g. `upstreams.api.servers[0].address`).
    pub fn err(&self, path: &str, msg: impl Into<String>) -> ConfigError {
        let (line, col) = self.pos.find(path);
        ConfigError {
            file: self.file.clone(),
            line,
            col,
            field: path.to_string(),
            msg: msg.into(),
        }
    }
}

/// Read and parse a YAML file.
pub fn load(path: &str) -> Result<Loaded, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_string(),
        line: 0,
        col: 0,
        field: String::new(),
        msg: format!("cannot read file: {e}"),
    })?;
    parse(path, &src)
}

/// Parse YAML text; `file` is only used in error messages.
pub fn parse(file: &str, src: &str) -> Result<Loaded, ConfigError> {
    match serde_yaml::from_str::<Config>(src) {
        Ok(cfg) => {
            let pos = Positions::index(src);
            if let Some((path, (line, col))) = pos.duplicates.first() {
                return Err(ConfigError {
                    file: file.to_string(),
                    line: *line,
                    col: *col,
                    field: path.clone(),
                    msg: "duplicate key (each name may appear only once)".into(),
                });
            }
            Ok(Loaded {
                file: file.to_string(),
                cfg,
                pos,
            })
        }
        Err(e) => {
            let (line, col) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            let text = e.to_string();
            // serde_yaml appends " at line L column C"; we print the position first.
            let text = match text.rfind(" at line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            // It prefixes the field path ("a.b[0]: msg"); split it out when present.
            let (field, msg) = match text.split_once(": ") {
                Some((f, m)) if !f.contains(' ') => (f.to_string(), m.to_string()),
                _ => (String::new(), text),
            };
            Err(ConfigError {
                file: file.to_string(),
                line,
                col,
                field,
                msg,
            })
        }
    }
}
