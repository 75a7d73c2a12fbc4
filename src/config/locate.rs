//! Where a key is written: turns a key path (`routes[2].upstream`) or a byte offset into the
//! 1-based line and column that config errors name.

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Find where a key path such as `routes[2].upstream` is written in the file.
///
/// Walks the parsed document as far as the path exists and returns the position of the deepest
/// item found (the value itself when the key is present, else the table it belongs in), so a
/// missing key points at the table that lacks it and a key set from the environment points at
/// the start of the file.
pub(super) fn locate(text: &str, key: &str) -> (usize, usize) {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return (1, 1);
    };
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for step in split_path(key) {
        let next = match step {
            Step::Key(k) => item.get(k.as_str()),
            Step::Index(i) => item.get(i),
        };
        match next {
            Some(n) => {
                item = n;
                if let Some(span) = span_of(n) {
                    best = Some(span);
                }
            }
            None => break,
        }
    }
    best.map_or((1, 1), |start| line_col(text, start))
}

fn span_of(item: &toml_edit::Item) -> Option<usize> {
    match item {
        toml_edit::Item::Value(v) => v.span().map(|s| s.start),
        toml_edit::Item::Table(t) => t.span().map(|s| s.start),
        toml_edit::Item::ArrayOfTables(a) => a.span().map(|s| s.start),
        toml_edit::Item::None => None,
    }
}

enum Step {
    Key(String),
    Index(usize),
}

fn split_path(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                steps.push(Step::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    steps.push(Step::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            steps.push(Step::Key(rest.to_string()));
        }
    }
    steps
}
