//! Portico's bundled plugins. Each lives in its own folder `plugins/<name>/`
//! with a `mod.rs` exposing `pub fn build(settings) -> Result<Box<dyn Plugin>, String>`.
//! To add one, write the folder and add its name to the list below: the
//! config name is the module name.

pub use portico_plugin_api as api;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

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

/// State that instances naming the same `zone` share, as nginx's shared
/// memory zones are shared by the locations using them: one for `kind`,
/// `name` and `version` (what must match to share, e.g. a rate) while any
/// instance holds it, so it also outlives a reload that keeps it.
pub(crate) fn zone<T: Send + Sync + 'static>(
    kind: &str,
    name: &str,
    version: &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    type Zones = HashMap<(String, String, String), Weak<dyn Any + Send + Sync>>;
    static ZONES: Mutex<Option<Zones>> = Mutex::new(None);
    let mut zones = ZONES.lock().unwrap_or_else(|e| e.into_inner());
    let zones = zones.get_or_insert_with(HashMap::new);
    zones.retain(|_, z| z.strong_count() > 0);
    let id = (kind.to_string(), name.to_string(), version.to_string());
    if let Some(Ok(z)) = zones.get(&id).and_then(Weak::upgrade).map(|z| z.downcast::<T>()) {
        return z;
    }
    let z = Arc::new(make());
    let shared: Arc<dyn Any + Send + Sync> = z.clone();
    zones.insert(id, Arc::downgrade(&shared));
    z
}

#[cfg(test)]
mod tests {
    #[test]
    fn instances_naming_a_zone_share_it_while_any_holds_it() {
        let a = super::zone("t", "one", "1", || std::sync::atomic::AtomicUsize::new(7));
        let b = super::zone("t", "one", "1", || std::sync::atomic::AtomicUsize::new(0));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let other = super::zone("t", "one", "2", || std::sync::atomic::AtomicUsize::new(0));
        assert!(!std::sync::Arc::ptr_eq(&a, &other), "another version: its own");
        drop((a, b));
        let again = super::zone("t", "one", "1", || std::sync::atomic::AtomicUsize::new(3));
        assert_eq!(
            again.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "made anew once unused"
        );
    }
}
