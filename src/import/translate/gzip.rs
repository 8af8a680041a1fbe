//! nginx's `gzip` directives (and those of the ngx_brotli module) into a
//! location's `compression` block. Each of them inherits on its own, as in
//! nginx (`gzip on` in `http`, a level in a `server`); a proxying location
//! with `gzip on` or `brotli on` gets the block.

use super::{note, Inherited, Translator};
use crate::config::schema::CompressionConf;
use crate::config::units::{parse_size, Size};
use crate::import::lex::Directive;

/// The `gzip*` settings in force at one level.
#[derive(Clone, Default)]
pub(super) struct Gzip {
    /// The `gzip on` in force.
    on: Option<Directive>,
    level: Option<u32>,
    min_length: Option<u64>,
    /// `gzip_types` beyond `text/html` (which nginx always compresses).
    types: Option<Vec<String>>,
    /// `gzip_proxied any`.
    proxied_any: bool,
    /// `brotli on` (ngx_brotli), `brotli_comp_level`, `brotli_types`.
    brotli: bool,
    brotli_level: Option<u32>,
    brotli_types: Option<Vec<String>>,
}

impl Gzip {
    /// The block a proxying location gets: `None` with gzip and brotli off.
    /// (Portico has one list of types: the two modules' lists together.)
    pub(super) fn compression(&self) -> Option<CompressionConf> {
        let gzip = self.on.is_some();
        if !gzip && !self.brotli {
            return None;
        }
        let mut types = vec!["text/html".to_string()];
        let listed = [gzip.then_some(&self.types), self.brotli.then_some(&self.brotli_types)];
        for t in listed.into_iter().flatten().flatten().flatten() {
            if !types.contains(t) {
                types.push(t.clone());
            }
        }
        if types.iter().any(|t| t == "*") {
            types = vec!["*".into()];
        }
        Some(CompressionConf {
            gzip: if gzip { self.level.unwrap_or(1) } else { 0 },
            // ngx_brotli's default level is 6.
            brotli: if self.brotli { self.brotli_level.unwrap_or(6) } else { 0 },
            zstd: 0,
            min_length: Size(self.min_length.unwrap_or(20)),
            types: Some(types),
        })
    }
}

/// The note on a `gzip on` whose locations compress without `gzip_proxied any`.
const PROXIED: &str = "Portico also compresses answers to requests that came through another proxy (with Via), \
     as `gzip_proxied any` would; nginx's default `gzip_proxied off` does not";

impl Translator {
    /// The `compression` block of a proxying location under `g`, with the
    /// note on its `gzip on` (once per line).
    pub(super) fn compression(&mut self, g: &Gzip) -> Option<CompressionConf> {
        let c = g.compression()?;
        if let Some(on) = g.on.as_ref().filter(|_| !g.proxied_any) {
            if !self.notes.iter().any(|n| n.line == on.line && n.why == PROXIED) {
                self.notes.push(note(on, PROXIED));
            }
        }
        Some(c)
    }

    /// A `gzip*` directive at any level. `true` if `d` was one.
    pub(super) fn gzip_setting(&mut self, d: &Directive, into: &mut Inherited) -> bool {
        let arg = d.args.first().map(String::as_str).unwrap_or("");
        let g = &mut into.gzip;
        match d.name.as_str() {
            "gzip" => g.on = (arg == "on").then(|| d.clone()),
            "gzip_comp_level" => match arg.parse::<u32>() {
                Ok(n) if (1..=9).contains(&n) => g.level = Some(n),
                _ => self.not_translated(d, "expected a level from 1 to 9"),
            },
            "gzip_min_length" => match parse_size(arg) {
                Ok(n) => g.min_length = Some(n),
                Err(e) => self.not_translated(d, e),
            },
            "gzip_types" => g.types = Some(d.args.clone()),
            "gzip_proxied" => {
                g.proxied_any = d.args.iter().any(|a| a == "any");
                if !g.proxied_any && arg != "off" {
                    self.not_translated(d, "Portico compresses whether or not a request came through a proxy");
                }
            }
            "gzip_vary" => {
                if arg == "off" {
                    self.notes.push(note(
                        d,
                        "Portico always sends Vary: Accept-Encoding with the answers it may compress",
                    ));
                }
            }
            "gzip_http_version" if arg == "1.0" => {
                self.not_translated(d, "Portico compresses for HTTP/1.1 and HTTP/2 clients only")
            }
            "gzip_http_version" | "gzip_buffers" => {}
            "gzip_disable" => self.not_translated(d, "Portico compresses for every client that accepts a coding"),
            "brotli" => g.brotli = arg == "on",
            "brotli_comp_level" => match arg.parse::<u32>() {
                Ok(n) if (1..=11).contains(&n) => g.brotli_level = Some(n),
                Ok(0) => g.brotli_level = Some(1), // Portico's lowest level
                _ => self.not_translated(d, "expected a level from 0 to 11"),
            },
            "brotli_types" => g.brotli_types = Some(d.args.clone()),
            "brotli_min_length" | "brotli_window" | "brotli_buffers" => {}
            "brotli_static" => self.not_translated(d, "Portico serves no files"),
            "gzip_static" | "gunzip" => {
                self.not_translated(d, "Portico serves no files and does not decompress answers")
            }
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_html_is_always_among_the_types_and_star_stands_alone() {
        let on = Some(Directive {
            name: "gzip".into(),
            args: vec!["on".into()],
            line: 1,
            block: None,
        });
        let g = Gzip {
            on: on.clone(),
            types: Some(vec!["application/json".into(), "text/html".into()]),
            ..Default::default()
        };
        let c = g.compression().unwrap();
        assert_eq!(c.types.unwrap(), ["text/html", "application/json"]);
        assert_eq!((c.gzip, c.min_length.0), (1, 20), "nginx's defaults");
        let any = Gzip {
            on,
            types: Some(vec!["*".into()]),
            ..Default::default()
        };
        assert_eq!(any.compression().unwrap().types.unwrap(), ["*"]);
        assert!(Gzip::default().compression().is_none());
    }
}
