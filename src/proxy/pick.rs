//! Choosing the upstream server for one attempt: builds the selection key the
//! pool's algorithm wants from the request, honours sticky cookies, and skips
//! servers this request already failed on.

use super::ctx::Ctx;
use super::downstream::Downstream;
use crate::upstream::sticky::{cookie_value, Mode};
use crate::upstream::{HashKey, Pool};
use std::borrow::Cow;

fn cookie<'a, D: Downstream>(s: &'a D, name: &str) -> Option<&'a str> {
    s.find_field("cookie", &mut |v| cookie_value(v, name))
}

fn key<'a, D: Downstream>(pool: &Pool, s: &'a D, ctx: &Ctx) -> Cow<'a, [u8]> {
    let Some(k) = &pool.hash_key else {
        return Cow::Borrowed(&[]);
    };
    match k {
        HashKey::ClientIp | HashKey::ClientNet => Cow::Owned(k.client_bytes(ctx.client_ip)),
        HashKey::Uri => Cow::Borrowed(s.path().as_bytes()),
        HashKey::RequestUri => Cow::Borrowed(s.target().as_bytes()),
        HashKey::Header(h) => Cow::Borrowed(s.req().headers.get(h.as_str()).map(|v| v.as_bytes()).unwrap_or(&[])),
        HashKey::Cookie(c) => Cow::Borrowed(cookie(s, c).unwrap_or("").as_bytes()),
        HashKey::Arg(a) => Cow::Borrowed(
            s.query()
                .and_then(|q| {
                    q.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == a).then_some(v)
                    })
                })
                .unwrap_or("")
                .as_bytes(),
        ),
    }
}

/// Pick a server index for the next attempt, or `None` if none is usable.
/// The request's header is read only where the pool's algorithm needs it.
pub fn choose<D: Downstream>(pool: &Pool, s: &D, ctx: &mut Ctx, https: bool) -> Option<usize> {
    let tried = &ctx.tried;
    let skip = |i: usize| tried.contains(&i);
    if let Some(st) = &pool.sticky {
        match st.mode {
            Mode::Insert => {
                let pinned = cookie(s, &st.cookie)
                    .and_then(|v| st.decode(v))
                    .and_then(|id| pool.server_by_sticky_id(id))
                    .filter(|&i| !skip(i) && pool.servers[i].usable());
                if let Some(i) = pinned {
                    pool.picked(i);
                    return pinned;
                }
                let i = pool.select(&[], &skip)?;
                ctx.sticky_cookie = pool.sticky_cookie(i, https);
                return Some(i);
            }
            Mode::Hash => {
                let v = cookie(s, &st.cookie).unwrap_or("");
                return pool.select(v.as_bytes(), &skip);
            }
        }
    }
    let k = key(pool, s, ctx);
    pool.select(&k, &skip)
}
