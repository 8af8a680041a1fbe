//! nginx configuration syntax: directives of words ended by `;`, blocks
//! in `{ }`, `#` comments, single- or double-quoted words, read into a
//! tree that keeps each directive's line.

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub line: usize,
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The directive as written, for messages: `proxy_pass http://b`.
    pub fn text(&self) -> String {
        let mut t = self.name.clone();
        for a in &self.args {
            t.push(' ');
            if a.is_empty() || a.contains(char::is_whitespace) {
                t.push('\'');
                t.push_str(a);
                t.push('\'');
            } else {
                t.push_str(a);
            }
        }
        t
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    End,
}

/// A file's directives, and the slips read past (line, what), as real
/// files have them: a block never closed (closed at the end of the file),
/// a `}` with no block to close or a stray `;` (skipped), a directive
/// without its `;` (ended where the next `}` or the file ends). `Err`: what
/// leaves the rest unreadable (a string never closed, a `{` with no name).
pub fn parse(src: &str) -> Result<Parsed, (usize, String)> {
    let tokens = tokens(src)?;
    let mut it = tokens.into_iter().peekable();
    let mut slips = Vec::new();
    let list = block(&mut it, None, &mut slips)?;
    Ok(Parsed { list, slips })
}

pub struct Parsed {
    pub list: Vec<Directive>,
    pub slips: Vec<(usize, String)>,
}

type Tokens = std::iter::Peekable<std::vec::IntoIter<(usize, Token)>>;

/// Directives up to the `}` that closes the block opened on `opened` (or the end of the file).
fn block(
    it: &mut Tokens,
    opened: Option<usize>,
    slips: &mut Vec<(usize, String)>,
) -> Result<Vec<Directive>, (usize, String)> {
    let mut list = Vec::new();
    loop {
        let Some((line, t)) = it.next() else {
            if let Some(l) = opened {
                slips.push((
                    l,
                    "the block opened here is never closed with \"}\": closed at the end of the file".into(),
                ));
            }
            return Ok(list);
        };
        let name = match t {
            Token::Word(w) => w,
            Token::Close if opened.is_some() => return Ok(list),
            Token::Close => {
                slips.push((line, "a \"}\" with no block to close: skipped".into()));
                continue;
            }
            Token::Open => return Err((line, "unexpected \"{\" (a block needs a directive name)".into())),
            Token::End => {
                slips.push((line, "a \";\" with no directive: skipped".into()));
                continue;
            }
        };
        let mut args = Vec::new();
        let block = loop {
            match it.peek() {
                Some((_, Token::Word(_))) => {
                    if let Some((_, Token::Word(w))) = it.next() {
                        args.push(w);
                    }
                }
                Some((_, Token::End)) => {
                    it.next();
                    break None;
                }
                Some(&(at, Token::Open)) => {
                    it.next();
                    break Some(block(it, Some(at), slips)?);
                }
                Some((_, Token::Close)) | None => {
                    let why = format!("directive \"{name}\" is not ended with \";\": ended here");
                    slips.push((line, why));
                    break None;
                }
            }
        };
        list.push(Directive {
            name,
            args,
            line,
            block,
        });
    }
}

fn tokens(src: &str) -> Result<Vec<(usize, Token)>, (usize, String)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '{' => out.push((line, Token::Open)),
            '}' => out.push((line, Token::Close)),
            ';' => out.push((line, Token::End)),
            '"' | '\'' => {
                let start = line;
                let mut w = String::new();
                loop {
                    match chars.next() {
                        None => return Err((start, format!("the string opened here with {c} is never closed"))),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some('n') => w.push('\n'),
                            Some('t') => w.push('\t'),
                            Some('r') => w.push('\r'),
                            Some(e) => {
                                if e != c && e != '\\' {
                                    w.push('\\');
                                }
                                line += usize::from(e == '\n');
                                w.push(e);
                            }
                            None => return Err((start, format!("the string opened here with {c} is never closed"))),
                        },
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            w.push(ch);
                        }
                    }
                }
                out.push((start, Token::Word(w)));
            }
            c => {
                let mut w = String::from(c);
                while let Some(&n) = chars.peek() {
                    // `${name}` keeps its braces inside a word.
                    if n == '{' && w.ends_with('$') {
                        for b in chars.by_ref() {
                            w.push(b);
                            if b == '}' {
                                break;
                            }
                        }
                        continue;
                    }
                    if n.is_whitespace() || matches!(n, ';' | '{' | '}' | '"' | '\'') {
                        break;
                    }
                    w.push(n);
                    chars.next();
                }
                out.push((line, Token::Word(w)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_blocks_quotes_and_comments_are_read_with_their_lines() {
        let src = "# a comment\nupstream b {\n  least_conn; # why\n  server 10.0.0.1:80 max_fails=3;\n}\n\
                   server {\n  location = /h { return 200 'o k'; }\n  add_header X \"a \\\"q\\\"\";\n}\n";
        let d = parse(src).unwrap().list;
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].name.as_str(), d[0].args.clone(), d[0].line),
            ("upstream", vec!["b".into()], 2)
        );
        let ups = d[0].block.as_ref().unwrap();
        assert_eq!(ups[0].name, "least_conn");
        assert_eq!(ups[1].args, vec!["10.0.0.1:80", "max_fails=3"]);
        assert_eq!(ups[1].line, 4);
        let srv = d[1].block.as_ref().unwrap();
        assert_eq!(srv[0].args, vec!["=", "/h"]);
        assert_eq!(srv[0].line, 7);
        assert_eq!(srv[0].block.as_ref().unwrap()[0].args, vec!["200", "o k"]);
        assert_eq!(srv[1].args, vec!["X", "a \"q\""]);
        assert_eq!(srv[1].line, 8);
        assert_eq!(parse("set $x ${a}b;").unwrap().list[0].args, vec!["$x", "${a}b"]);
    }

    #[test]
    fn slips_are_read_past_and_named_with_their_line() {
        let slips = |src: &str| {
            let p = parse(src).unwrap();
            (p.list.len(), p.slips.iter().map(|s| s.0).collect::<Vec<_>>())
        };
        // Never closed: `server` closed with the file, `http` too.
        let p = parse("http {\n server {\n listen 80;\n}\n").unwrap();
        assert_eq!(p.slips.len(), 1);
        assert_eq!(p.slips[0].0, 1);
        assert_eq!(
            p.list[0].block.as_ref().unwrap()[0].block.as_ref().unwrap()[0].args,
            vec!["80"]
        );
        assert_eq!(slips("a b;\n}\nc;\n"), (2, vec![2]));
        assert_eq!(slips("s {\nlisten 80\n}\n"), (1, vec![2]));
        assert_eq!(slips("listen 80"), (1, vec![1]));
        assert_eq!(slips("a;;\n"), (1, vec![1]));
    }

    #[test]
    fn what_leaves_the_rest_unreadable_is_an_error_with_its_line() {
        assert_eq!(parse("a;\nreturn 200 'ok;\n").err().unwrap().0, 2);
        assert_eq!(parse("a;\n\n{ b; }").err().unwrap().0, 3);
    }
}
