//! The log fields two ways: as docs/OBSERVABILITY.md's table names them,
//! and as the source writes them (every field of every `tracing` event and
//! span macro, `#[instrument(fields(...))]` and `Span::record` in `src/`).

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The fields docs/OBSERVABILITY.md's "Log fields" table lists.
pub fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/OBSERVABILITY.md")).unwrap();
    let table = doc
        .split("### Log fields")
        .nth(1)
        .expect("docs/OBSERVABILITY.md has a Log fields section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split(','))
        .map(|name| name.trim().trim_matches('`').to_owned())
        .filter(|name| !name.is_empty() && name != "field" && !name.starts_with("---"))
        .collect()
}

/// The keys the JSON format writes itself, around the event's own fields.
pub const LINE_KEYS: &[&str] = &["timestamp", "level", "message", "target", "span", "name"];

/// Every field name the source gives an event or a span.
pub fn written() -> BTreeSet<String> {
    let mut files = Vec::new();
    super::rust_sources(&Path::new(ROOT).join("src"), &mut files);
    let mut fields = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        // Unit tests (at the end of a file) log what they like.
        let shipped = source.split("#[cfg(test)]").next().unwrap_or_default();
        let text: String = shipped
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (opening, kind) in [
            ("info!(", Macro::Event),
            ("warn!(", Macro::Event),
            ("error!(", Macro::Event),
            ("debug!(", Macro::Event),
            ("trace!(", Macro::Event),
            ("_span!(", Macro::Span),
            ("fields(", Macro::Fields),
        ] {
            for (at, _) in text.match_indices(opening) {
                let body = balanced(&text[at + opening.len()..]);
                fields.extend(names(&items(body), kind));
            }
        }
        for (at, _) in text.match_indices(".record(\"") {
            let rest = &text[at + ".record(\"".len()..];
            fields.insert(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    fields
}

#[derive(Clone, Copy, PartialEq)]
enum Macro {
    /// Fields, then the message (a string literal) and its arguments.
    Event,
    /// The span's name (a string literal), then fields.
    Span,
    /// `#[instrument(fields(...))]`: fields only.
    Fields,
}

/// Each character outside string literals, with the bracket depth before
/// it (brackets of any kind, counted from 0).
fn code_chars(text: &str) -> impl Iterator<Item = (usize, char, i32)> + '_ {
    let (mut depth, mut in_string, mut escaped) = (0, false, false);
    text.char_indices().filter_map(move |(i, c)| {
        let before = depth;
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (true, '"') => in_string = false,
            (true, _) => {}
            (false, '"') => in_string = true,
            (false, '(' | '[' | '{') => depth += 1,
            (false, ')' | ']' | '}') => depth -= 1,
            (false, _) => return Some((i, c, before)),
        }
        (!in_string && c != '"').then_some((i, c, before))
    })
}

/// The text up to the parenthesis that closes the one just opened.
fn balanced(text: &str) -> &str {
    code_chars(text)
        .find(|&(_, c, depth)| depth == 0 && matches!(c, ')' | ']' | '}'))
        .map_or(text, |(i, _, _)| &text[..i])
}

/// The comma-separated items at the top level of a macro's arguments.
fn items(body: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    for (i, _, _) in code_chars(body).filter(|&(_, c, depth)| c == ',' && depth == 0) {
        items.push(body[start..i].trim());
        start = i + 1;
    }
    items.push(body[start..].trim());
    items.retain(|item| !item.is_empty());
    items
}

/// The field names among a macro's items: `name = value`, `"dotted.name" =
/// value`, and the shorthands `name`, `%name`, `?name`.
fn names(items: &[&str], kind: Macro) -> Vec<String> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    };
    let mut names = Vec::new();
    let mut seen_string = false;
    for item in items {
        if let Some(quoted) = item.strip_prefix('"') {
            let Some((name, rest)) = quoted.split_once('"') else {
                continue;
            };
            if rest.trim_start().starts_with('=') {
                names.push(name.to_owned());
                continue;
            }
            // The event's message: what follows are its arguments.
            if kind == Macro::Event {
                break;
            }
            seen_string = true;
            continue;
        }
        if kind == Macro::Span && !seen_string {
            continue;
        }
        let field = match item.split_once('=') {
            Some((name, _)) if !name.ends_with(['!', '<', '>']) => name.trim(),
            Some(_) => continue,
            None => item.trim_start_matches(['%', '?']),
        };
        if is_name(field) && !item.contains(':') || is_name(field) && item.contains('=') {
            names.push(field.to_owned());
        }
    }
    names
}
