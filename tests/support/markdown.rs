//! Reading the documents of `docs/` in the tests that check them against the code: the text
//! under a heading, its table as rows of named cells, the code spans of a cell, and numbers as
//! the documents write them (`12 416`, `64 x 192`). Included with
//! `#[path = "support/markdown.rs"] mod markdown;`.
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::path::PathBuf;

/// The text of `docs/<name>`.
pub fn read_doc(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The title of a heading line (`## Title` gives `Title`), or `None` for any other line.
fn heading_title(line: &str) -> Option<&str> {
    let title = line.trim_start_matches('#');
    if title.len() == line.len() {
        return None;
    }
    title.strip_prefix(' ').map(str::trim)
}

/// The text right under the heading titled `title` (any level), up to the next heading of any
/// level; headings inside fenced code blocks do not count. Panics unless exactly one heading of
/// `doc` has that title.
pub fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    // (start, end) of every heading line outside code blocks, with its title.
    let mut headings = Vec::new();
    let mut fenced = false;
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if let Some(found) = heading_title(line).filter(|_| !fenced) {
            headings.push((start, offset, found));
        }
    }
    let matching: Vec<usize> = (0..headings.len())
        .filter(|&i| headings[i].2 == title)
        .collect();
    let [index] = matching[..] else {
        panic!(
            "the document has {} headings titled {title:?}, not one",
            matching.len()
        );
    };
    let end = headings.get(index + 1).map_or(doc.len(), |next| next.0);
    &doc[headings[index].1..end]
}

/// One body row of a table.
pub struct Row {
    /// The row as written, for messages.
    pub line: String,
    cells: HashMap<String, String>,
}

impl Row {
    /// The cell of `column` (trimmed, `\|` unescaped); panics if the table has no such column.
    pub fn get(&self, column: &str) -> &str {
        self.cells
            .get(column)
            .unwrap_or_else(|| panic!("no column {column:?} in the table of row {}", self.line))
    }
}

/// A table: its column names (the header row) and its body rows.
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// The cells of a table line: split on every `|` not escaped as `\|`, trimmed, unescaped.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

/// The one table in the text right under the heading titled `title` (see [`section`]); panics
/// unless there is exactly one, or if a row has another number of cells than the header.
pub fn table(doc: &str, title: &str) -> Table {
    let text = section(doc, title);
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = lines
        .split(|line| !line.trim_start().starts_with('|'))
        .filter(|block| !block.is_empty());
    let block = blocks
        .next()
        .unwrap_or_else(|| panic!("no table under {title:?}"));
    assert!(
        blocks.next().is_none(),
        "more than one table under {title:?}"
    );
    assert!(
        block.len() >= 2 && cells(block[1]).iter().all(|c| c.starts_with("---")),
        "the table under {title:?} has no header row and separator"
    );
    let columns = cells(block[0]);
    let rows = block[2..]
        .iter()
        .map(|line| {
            let row = cells(line);
            assert_eq!(
                row.len(),
                columns.len(),
                "a row under {title:?} has {} cells for {} columns: {line}",
                row.len(),
                columns.len()
            );
            Row {
                line: line.to_string(),
                cells: columns.iter().cloned().zip(row).collect(),
            }
        })
        .collect();
    Table { columns, rows }
}

/// The code spans of `text` (what stands between pairs of backticks), in order.
pub fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A number written with spaces between groups of digits (`3 289 216`); `None` for anything else.
pub fn number(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(|c| *c != ' ').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `n` written the way the documents write large numbers: groups of three digits separated by
/// spaces from 10 000 up (`12 416`, `3 289 216`), plain below.
pub fn spaced(n: u64) -> String {
    let digits = n.to_string();
    if digits.len() <= 4 {
        return digits;
    }
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
