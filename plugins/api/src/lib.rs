//! The interface of Portico filter plugins.
//!
//! A plugin is a value implementing [`Plugin`], built by a [`Factory`] from
//! its YAML settings. The gateway calls its hooks at five points of every
//! request it is enabled for, in the configured order (global, then virtual
//! host, then location):
//!
//! 1. [`Plugin::request`]: the request arrived and was routed. Read or edit
//!    its headers, or answer it directly with [`Flow::Respond`] (later
//!    plugins and the upstream are then skipped).
//! 2. [`Plugin::upstream_request`]: just before the request goes upstream;
//!    edits reach only the upstream copy.
//! 3. [`Plugin::upstream_response`]: the upstream's response header arrived.
//! 4. [`Plugin::response`]: just before the response header goes to the
//!    client (also for answers a plugin made itself).
//! 5. [`Plugin::log`]: the request is over; add fields to the access log.
//!
//! Plugins see this crate only, never the gateway's internals. Per-request
//! state goes in [`Ctx::scratch`] (typed, one value per type).
//!
//! A plugin names the hooks it implements in [`Plugin::hooks`]; the gateway
//! calls only those (an async hook costs a boxed future per request even
//! when it does nothing), and a location whose plugins edit no request or
//! response header sends them on as they came.

use async_trait::async_trait;
use bytes::Bytes;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// Header access that keeps the gateway's own bookkeeping right.
pub trait Headers: Send {
    fn get(&self, name: &str) -> Option<&str>;
    /// Replace every value of `name`.
    fn set(&mut self, name: &str, value: &str) -> Result<(), String>;
    /// Add a value, keeping existing ones.
    fn append(&mut self, name: &str, value: &str) -> Result<(), String>;
    fn remove(&mut self, name: &str);
}

/// Facts about the request, and the plugin's scratch space.
pub struct Ctx {
    pub client_ip: Option<IpAddr>,
    /// The listener's scheme: `http` or `https`.
    pub scheme: &'static str,
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    /// `host path` of the matched location.
    pub route: Arc<str>,
    /// Upstream pool, when the location proxies.
    pub pool: Option<Arc<str>>,
    /// Per-request storage shared by all plugins (typed map).
    pub scratch: http::Extensions,
    /// `key=value` fields appended to the access-log line (a key is
    /// usually a constant: `("request_id".into(), id)`).
    pub log_fields: Vec<(Cow<'static, str>, String)>,
}

/// An answer made by a plugin instead of the upstream.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// What happens after [`Plugin::request`].
pub enum Flow {
    Continue,
    Respond(Reply),
}

/// A set of [`Plugin`] hooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hooks(u8);

impl Hooks {
    pub const NONE: Hooks = Hooks(0);
    pub const REQUEST: Hooks = Hooks(1);
    pub const UPSTREAM_REQUEST: Hooks = Hooks(2);
    pub const UPSTREAM_RESPONSE: Hooks = Hooks(4);
    pub const RESPONSE: Hooks = Hooks(8);
    pub const LOG: Hooks = Hooks(16);
    pub const ALL: Hooks = Hooks(31);

    /// Both sets together: `Hooks::REQUEST.and(Hooks::RESPONSE)`.
    pub const fn and(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    /// Does this set hold any hook of `other`?
    pub const fn any(self, other: Hooks) -> bool {
        self.0 & other.0 != 0
    }
}

#[async_trait]
pub trait Plugin: Send + Sync {
    /// The hooks this plugin implements: the gateway calls no other. All of
    /// them unless the plugin says otherwise.
    fn hooks(&self) -> Hooks {
        Hooks::ALL
    }
    /// The request arrived (headers as the client sent them, after routing).
    async fn request(&self, _ctx: &mut Ctx, _headers: &mut dyn Headers) -> Flow {
        Flow::Continue
    }
    /// Just before the request is sent upstream.
    async fn upstream_request(&self, _ctx: &mut Ctx, _headers: &mut dyn Headers) {}
    /// The upstream's response header arrived.
    fn upstream_response(&self, _ctx: &mut Ctx, _status: u16, _headers: &mut dyn Headers) {}
    /// Just before the response header is sent to the client.
    fn response(&self, _ctx: &mut Ctx, _status: u16, _headers: &mut dyn Headers) {}
    /// The request is over.
    fn log(&self, _ctx: &mut Ctx, _status: u16) {}
}

/// Builds a plugin from its YAML settings; a bad setting is an `Err` that
/// names the field (shown by `portico -t` with the file position).
pub type Factory = fn(&serde_yaml::Value) -> Result<Box<dyn Plugin>, String>;

/// Deserialize settings into `T`, turning serde's message into a field error.
pub fn settings<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value) -> Result<T, String> {
    serde_yaml::from_value(v.clone()).map_err(|e| e.to_string())
}
