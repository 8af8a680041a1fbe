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
