//! The process's logger: `env_logger` (`RUST_LOG`, default `warn`), with the
//! records of known benign Pingora conditions written at debug level.

use log::{Level, Log, Metadata, Record};

/// Install the logger.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

struct Logger {
    inner: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &Record) {
        if !demoted(r) {
            return self.inner.log(r);
        }
        let debug = Record::builder()
            .args(*r.args())
            .level(Level::Debug)
            .target(r.target())
            .module_path(r.module_path())
            .file(r.file())
            .line(r.line())
            .build();
        self.inner.log(&debug);
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// A record that is no error, whatever its level says. With more than one
/// thread, Pingora's upstream pool can lose the race it runs against its own
/// idle watcher for a pooled connection (Pingora issue 998, reproduced here
/// with `server.threads: 2`): it then connects anew, which costs a
/// connection, not the request, and logs an error for each.
fn demoted(r: &Record) -> bool {
    r.level() == Level::Error
        && r.target() == "pingora_core::connectors"
        && r.args().as_str() == Some("failed to acquire reusable stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_benign_record_is_demoted() {
        let record = |level, target, args| {
            let r = Record::builder().level(level).target(target).args(args).build();
            demoted(&r)
        };
        let lost = format_args!("failed to acquire reusable stream");
        assert!(record(Level::Error, "pingora_core::connectors", lost));
        let lost = format_args!("failed to acquire reusable stream");
        assert!(!record(Level::Error, "portico::proxy", lost));
        let other = format_args!("connect refused");
        assert!(!record(Level::Error, "pingora_core::connectors", other));
    }
}
