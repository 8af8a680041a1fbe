//! Maps a field path such as `upstreams.backend.servers[1].address` to the
//! line and column where it appears in the YAML source, so that semantic
//! errors found after deserialisation can still point at the exact spot.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Position (1-based line, 1-based column) of every node, keyed by its path.
#[derive(Default, Debug)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
    /// Keys that appear twice in the same mapping: (path, position of the second).
    pub duplicates: Vec<(String, (usize, usize))>,
}

impl Positions {
    pub fn index(src: &str) -> Self {
        let mut rx = Indexer::default();
        // A syntax error is reported by serde_yaml with its own position; here
        // we simply keep whatever was indexed before it.
        let _ = Parser::new_from_str(src).load(&mut rx, false);
        Positions {
            map: rx.map,
            duplicates: rx.dups,
        }
    }

    /// The position of `path`, or of its closest indexed ancestor.
    pub fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }
}

enum Frame {
    /// A mapping; `key` is the pending key once read, `None` while expecting a key.
    Map {
        key: Option<String>,
    },
    Seq {
        next: usize,
    },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<(String, Frame)>,
    map: HashMap<String, (usize, usize)>,
    dups: Vec<(String, (usize, usize))>,
}

impl Indexer {
    /// Path of the node that is about to start, or `None` if the event is a mapping key.
    fn child_path(&mut self) -> Option<String> {
        let (base, frame) = match self.stack.last_mut() {
            None => return Some(String::new()),
            Some(top) => (&top.0, &mut top.1),
        };
        match frame {
            Frame::Map { key } => key
                .take()
                .map(|k| if base.is_empty() { k } else { format!("{base}.{k}") }),
            Frame::Seq { next } => {
                *next += 1;
                Some(format!("{base}[{}]", *next - 1))
            }
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(s, ..) => match self.child_path() {
                Some(p) => {
                    self.map.entry(p).or_insert(pos);
                }
                None => {
                    // A mapping key: remember it and index the key's own position.
                    if let Some((base, Frame::Map { key })) = self.stack.last_mut() {
                        let p = if base.is_empty() {
                            s.clone()
                        } else {
                            format!("{base}.{s}")
                        };
                        if self.map.insert(p.clone(), pos).is_some() {
                            self.dups.push((p, pos));
                        }
                        *key = Some(s);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.child_path().unwrap_or_default();
                self.map.entry(path.clone()).or_insert(pos);
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { next: 0 }
                };
                self.stack.push((path, frame));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.child_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields() {
        let src = "a:\n  b:\n    - x: 1\n      y: 2\n    - x: 3\nc: [1, 2]\n";
        let p = Positions::index(src);
        assert_eq!(p.find("a.b[1].x"), (5, 7));
        assert_eq!(p.find("a.b[0].y"), (4, 7));
        assert_eq!(p.find("a.b[0].y.nothing"), (4, 7));
        assert_eq!(p.find("c"), (6, 1));
    }
}
