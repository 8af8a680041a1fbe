//! Strings with nginx-style variables (`$scheme`, `$host`, `$request_uri`,
//! `$uri`, `$remote_addr`), parsed once at config time and expanded per request.

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Var {
    Scheme,
    Host,
    RequestUri,
    Uri,
    RemoteAddr,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

/// What a template can draw on for one request.
pub struct Vars<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub request_uri: &'a str,
    pub uri: &'a str,
    pub remote_addr: &'a str,
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            // `${name}` (nginx's form for a name followed by a letter) or `$name`.
            let braced = after.strip_prefix('{').and_then(|b| Some((b, b.find('}')?)));
            let (name, skip) = match braced {
                Some((inner, close)) => (&inner[..close], close + 2),
                None => {
                    let len = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..len], len)
                }
            };
            let var = match name {
                "scheme" => Var::Scheme,
                "host" => Var::Host,
                "request_uri" => Var::RequestUri,
                "uri" => Var::Uri,
                "remote_addr" => Var::RemoteAddr,
                "" => {
                    lit.push('$');
                    rest = after;
                    continue;
                }
                other => {
                    return Err(format!(
                        "unknown variable ${other} (known: $scheme, $host, $request_uri, $uri, $remote_addr)"
                    ))
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = &after[skip..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template(parts))
    }

    /// Does the template use `$remote_addr` (which costs writing the address)?
    pub fn uses_remote_addr(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Part::Var(Var::RemoteAddr)))
    }

    pub fn expand(&self, v: &Vars) -> String {
        let mut out = String::new();
        for p in &self.0 {
            out.push_str(match p {
                Part::Lit(s) => s,
                Part::Var(Var::Scheme) => v.scheme,
                Part::Var(Var::Host) => v.host,
                Part::Var(Var::RequestUri) => v.request_uri,
                Part::Var(Var::Uri) => v.uri,
                Part::Var(Var::RemoteAddr) => v.remote_addr,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands() {
        let t = Template::parse("https://$host$request_uri").unwrap();
        let v = Vars {
            scheme: "http",
            host: "a.com",
            request_uri: "/x?y=1",
            uri: "/x",
            remote_addr: "1.2.3.4",
        };
        assert_eq!(t.expand(&v), "https://a.com/x?y=1");
        assert!(Template::parse("$nope").is_err());
        assert_eq!(Template::parse("cost $ 5").unwrap().expand(&v), "cost $ 5");
        assert!(Template::parse("$remote_addr via $scheme").unwrap().uses_remote_addr());
        assert!(!t.uses_remote_addr());
        // nginx's braced form, for a name followed by a letter.
        let braced = Template::parse("${scheme}://${host}v2${request_uri}").unwrap();
        assert_eq!(braced.expand(&v), "http://a.comv2/x?y=1");
        assert!(Template::parse("${nope}").is_err());
    }
}
