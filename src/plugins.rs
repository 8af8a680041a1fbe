//! The gateway side of filter plugins (`plugins/`): building instances from
//! the config through the registry, and adapting Pingora's headers to the
//! plugin API's `Headers`.

use crate::config::{schema::PluginEntry, ConfigError, Loaded};
use crate::proxy::downstream::Downstream;
use pingora_http::{RequestHeader, ResponseHeader};
use portico_plugin_api::{Headers, Plugin};
use std::sync::Arc;

pub type PluginList = Vec<Arc<dyn Plugin>>;

/// Build the plugins listed at `path` (e.g. `virtual_hosts[0].plugins`).
pub fn build(l: &Loaded, path: &str, list: &[PluginEntry]) -> Result<PluginList, ConfigError> {
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let mut it = entry.iter();
        let (Some((name, settings)), None) = (it.next(), it.next()) else {
            return Err(l.err(&p, "each plugin entry is one `name: { settings }` pair"));
        };
        let factory = portico_plugins::registry()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let known: Vec<&str> = portico_plugins::registry().iter().map(|(n, _)| *n).collect();
                l.err(
                    &format!("{p}.{name}"),
                    format!("unknown plugin {name:?} (known: {})", known.join(", ")),
                )
            })?;
        let settings = if settings.is_null() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            settings.clone()
        };
        let plugin = factory(&settings).map_err(|e| l.err(&format!("{p}.{name}"), format!("plugin {name}: {e}")))?;
        out.push(Arc::from(plugin));
    }
    Ok(out)
}

pub struct ReqHeaders<'a>(pub &'a mut RequestHeader);
pub struct RespHeaders<'a>(pub &'a mut ResponseHeader);

macro_rules! headers_impl {
    ($t:ident) => {
        impl Headers for $t<'_> {
            fn get(&self, name: &str) -> Option<&str> {
                self.0.headers.get(name).and_then(|v| v.to_str().ok())
            }
            fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
                self.0
                    .insert_header(name.to_string(), value.to_string())
                    .map_err(|e| e.to_string())
            }
            fn append(&mut self, name: &str, value: &str) -> Result<(), String> {
                self.0
                    .append_header(name.to_string(), value.to_string())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            fn remove(&mut self, name: &str) {
                self.0.remove_header(name);
            }
        }
    };
}

headers_impl!(ReqHeaders);
headers_impl!(RespHeaders);

/// The client's request header for the plugins' `request` hook. It asks
/// the session for the header mutably only to edit it: in the lean loop
/// that makes the upstream request be written from the header instead of
/// the lines as they came, so a hook that only reads must not.
pub struct ClientHeaders<'a, D: Downstream>(pub &'a mut D);

impl<D: Downstream> Headers for ClientHeaders<'_, D> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.req().headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        ReqHeaders(self.0.req_mut()).set(name, value)
    }
    fn append(&mut self, name: &str, value: &str) -> Result<(), String> {
        ReqHeaders(self.0.req_mut()).append(name, value)
    }
    fn remove(&mut self, name: &str) {
        ReqHeaders(self.0.req_mut()).remove(name)
    }
}
