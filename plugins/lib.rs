//! Portico's bundled plugins. Each lives in its own folder `plugins/<name>/`
//! with a `mod.rs` exposing `pub fn build(settings) -> Result<Box<dyn Plugin>, String>`.
//! To add one, write the folder and add its name to the list below: the
//! config name is the module name.

pub use portico_plugin_api as api;

macro_rules! plugins {
    ($($name:ident),* $(,)?) => {
        $(pub mod $name;)*
        /// Every bundled plugin: (config name, factory).
        pub fn registry() -> &'static [(&'static str, api::Factory)] {
            &[$((stringify!($name), $name::build as api::Factory)),*]
        }
    };
}

plugins! {
    basic_auth,
    cors,
    greeting,
    headers,
    ip_access,
    limit_conn,
    rate_limit,
    request_id,
}

/// Client IP as text, or `-`.
pub(crate) fn ip_text(ctx: &api::Ctx) -> String {
    ctx.client_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
}

/// What a limit counts by: the client's address, a request field's value,
/// or (where a plugin allows it) everything it sees as one.
pub(crate) enum Key {
    ClientIp,
    Header(String),
    All,
}

impl Key {
    /// `$remote_addr` (also nginx's `$binary_remote_addr`), `$http_NAME`,
    /// and with `all`, `-`.
    pub(crate) fn parse(s: &str, all: bool) -> Result<Key, String> {
        match s {
            "$remote_addr" | "$binary_remote_addr" => Ok(Key::ClientIp),
            "-" if all => Ok(Key::All),
            k if k.starts_with("$http_") && k.len() > 6 => Ok(Key::Header(k[6..].replace('_', "-"))),
            k => Err(format!(
                "key: unsupported {k:?} (use $remote_addr, $http_NAME{})",
                if all { " or \"-\"" } else { "" }
            )),
        }
    }

    /// This request's value of the key.
    pub(crate) fn of(&self, ctx: &api::Ctx, h: &dyn api::Headers) -> String {
        match self {
            Key::ClientIp => ip_text(ctx),
            Key::Header(name) => h.get(name).unwrap_or("").to_string(),
            Key::All => String::new(),
        }
    }
}

fn default_key() -> String {
    "$remote_addr".into()
}
