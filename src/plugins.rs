//! The gateway side of filter plugins (`plugins/`): building instances from
//! the config through the registry, and adapting Pingora's headers to the
//! plugin API's `Headers`.

use crate::config::{schema::PluginEntry, ConfigError, Loaded};
use crate::proxy::downstream::Downstream;
use pingora_http::{RequestHeader, ResponseHeader};
use portico_plugin_api::{Headers, Hooks, Plugin};
use std::sync::Arc;

/// A location's plugins in run order, each with the hooks it implements.
#[derive(Clone, Default)]
pub struct PluginList {
    list: Vec<(Arc<dyn Plugin>, Hooks)>,
    /// Every hook some plugin implements.
    any: Hooks,
}

impl PluginList {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Does some plugin implement a hook of `hooks`?
    pub fn any(&self, hooks: Hooks) -> bool {
        self.any.any(hooks)
    }

    /// The plugins that implement `hook`, in run order.
    pub fn with(&self, hook: Hooks) -> impl Iterator<Item = &dyn Plugin> + '_ {
        (self.list.iter()).filter(move |(_, h)| h.any(hook)).map(|(p, _)| &**p)
    }

    fn push(&mut self, p: Arc<dyn Plugin>) {
        let hooks = p.hooks();
        self.any = self.any.and(hooks);
        self.list.push((p, hooks));
    }

    /// These plugins, then `more`'s.
    pub fn then(&self, more: &PluginList) -> PluginList {
        let mut all = self.clone();
        for (p, _) in &more.list {
            all.push(p.clone());
        }
        all
    }
}

/// Build the plugins listed at `path` (e.g. `virtual_hosts[0].plugins`).
pub fn build(l: &Loaded, path: &str, list: &[PluginEntry]) -> Result<PluginList, ConfigError> {
    let mut out = PluginList::default();
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

/// The first value of `name` (any case) in a request's header. A lookup by
/// `&str` makes `http` parse the name first (about 340 instructions); a
/// request's few fields are quicker to walk, compared by length first.
pub fn field<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h http::HeaderValue> {
    (headers.iter())
        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
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
/// the lines as they came, so a hook that only reads must not. Reading
/// goes through `Downstream::header`, which in the lean loop needs no
/// header built.
pub struct ClientHeaders<'a, D: Downstream>(pub &'a mut D);

impl<D: Downstream> Headers for ClientHeaders<'_, D> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.header(name)
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    struct Named(Hooks);

    #[async_trait]
    impl Plugin for Named {
        fn hooks(&self) -> Hooks {
            self.0
        }
    }

    #[test]
    fn each_hook_reaches_only_the_plugins_that_name_it() {
        let mut a = PluginList::default();
        a.push(Arc::new(Named(Hooks::REQUEST.and(Hooks::RESPONSE))));
        let mut b = PluginList::default();
        b.push(Arc::new(Named(Hooks::LOG)));
        b.push(Arc::new(Named(Hooks::ALL)));
        let all = a.then(&b);
        let count = |hook| all.with(hook).count();
        assert_eq!(
            [
                Hooks::REQUEST,
                Hooks::UPSTREAM_REQUEST,
                Hooks::UPSTREAM_RESPONSE,
                Hooks::RESPONSE,
                Hooks::LOG
            ]
            .map(count),
            [2, 1, 1, 2, 2]
        );
        assert!(!a.any(Hooks::UPSTREAM_REQUEST) && a.any(Hooks::UPSTREAM_REQUEST.and(Hooks::RESPONSE)));
        assert!(all.any(Hooks::UPSTREAM_REQUEST));
        assert!(!PluginList::default().any(Hooks::ALL));
    }
}
