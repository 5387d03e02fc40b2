//! `docs/ledger.md`'s layout tables against `vramguard_core::ledger::layout`: every field of every
//! record in shared memory documented at its offset with its size, nothing documented that the
//! record does not have, every gap documented as padding; the header's fixed values, the lock
//! bytes past the end of the file, and the file's size.

#[path = "support/markdown.rs"]
mod markdown;

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use markdown::number;
use vramguard_core::ledger::layout::{
    self, DeviceRecord, Header, LedgerLayout, SlotDevice, SlotRecord,
};

/// The section whose text holds the file's table (and states the file's size).
const FILE_SECTION: &str = "Layout (version 1)";
/// The section of the header's table.
const HEADER_SECTION: &str = "Header";
/// The section of the lock bytes' table.
const LOCK_SECTION: &str = "Lock bytes";
/// The name a row gives bytes that hold no field.
const PADDING: &str = "padding";

/// How a field is laid out: `count` elements of `element` bytes each (`count` 1 for a plain
/// field), written `element` or `count x element` in the document's size column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    count: usize,
    element: usize,
}

impl Shape {
    fn bytes(self) -> usize {
        self.count * self.element
    }

    /// A size cell: `s` or `n x s` (numbers may group their digits with spaces).
    fn parse(cell: &str) -> Option<Shape> {
        let (count, element) = match cell.split_once(" x ") {
            Some((count, element)) => (number(count)?, number(element)?),
            None => (1, number(cell)?),
        };
        Some(Shape {
            count: count as usize,
            element: element as usize,
        })
    }

    /// The size cell that documents this shape.
    fn cell(self) -> String {
        let element = markdown::spaced(self.element as u64);
        match self.count {
            1 => element,
            count => format!("{} x {element}", markdown::spaced(count as u64)),
        }
    }
}

/// The shape of a type that appears in the ledger's records.
trait Laid {
    const SHAPE: Shape;
}

impl Laid for AtomicU32 {
    const SHAPE: Shape = Shape {
        count: 1,
        element: size_of::<AtomicU32>(),
    };
}

impl Laid for AtomicU64 {
    const SHAPE: Shape = Shape {
        count: 1,
        element: size_of::<AtomicU64>(),
    };
}

impl Laid for Header {
    const SHAPE: Shape = Shape {
        count: 1,
        element: size_of::<Header>(),
    };
}

impl<T, const N: usize> Laid for [T; N] {
    const SHAPE: Shape = Shape {
        count: N,
        element: size_of::<T>(),
    };
}

/// The shape of the field `project` reaches.
fn shape_of<R, F: Laid>(_project: fn(&R) -> &F) -> Shape {
    F::SHAPE
}

/// One field as the code lays it out.
struct Field {
    name: &'static str,
    offset: usize,
    shape: Shape,
}

/// The fields of `$record` as the code lays them out. The list must name every field of the
/// record: one added to the record and not here fails to compile, since the pattern is
/// exhaustive (rustc then says "pattern requires `..`": add the new field to the list).
macro_rules! fields {
    ($record:ident { $($field:ident),+ $(,)? }) => {{
        #[allow(dead_code)]
        fn names_every_field(record: &$record) {
            let $record { $($field: _),+ } = record;
        }
        vec![$(Field {
            name: stringify!($field),
            offset: offset_of!($record, $field),
            shape: shape_of(|record: &$record| &record.$field),
        }),+]
    }};
}

/// A record of the file and the section of the document whose table describes it.
struct Record {
    section: &'static str,
    size: usize,
    fields: Vec<Field>,
}

fn records() -> Vec<Record> {
    vec![
        Record {
            section: FILE_SECTION,
            size: layout::FILE_SIZE,
            fields: fields!(LedgerLayout {
                header,
                devices,
                slots
            }),
        },
        Record {
            section: HEADER_SECTION,
            size: layout::HEADER_SIZE,
            fields: fields!(Header {
                magic,
                layout_version,
                header_size,
                file_size,
                max_processes,
                max_devices,
                device_record_size,
                slot_record_size,
                devices_offset,
                slots_offset,
                lock_base,
                slot_high_water,
                device_high_water,
                created_unix_ms,
            }),
        },
        Record {
            section: "Device record",
            size: layout::DEVICE_RECORD_SIZE,
            fields: fields!(DeviceRecord {
                uuid,
                state,
                waiters,
                capacity,
                budget,
                charged,
                held,
                in_flight,
                lock,
                wake_seq,
                repairs,
                next_ticket,
                name,
                context_bytes,
                context_measured_unix_ms,
                driver_used,
                driver_unaccounted,
                driver_seen_unix_ms,
            }),
        },
        Record {
            section: "Process slot",
            size: layout::SLOT_RECORD_SIZE,
            fields: fields!(SlotRecord {
                state,
                pid,
                generation,
                pid_namespace,
                started_unix_ms,
                reserved,
                command,
                devices,
            }),
        },
        Record {
            section: "A member's standing on one device",
            size: size_of::<SlotDevice>(),
            fields: fields!(SlotDevice {
                held,
                in_flight,
                claim,
                wait_ticket,
                wait_bytes,
                wait_since_unix_ms,
            }),
        },
    ]
}

/// Where the table of `record` disagrees with the code, one line each.
fn disagreements(doc: &str, record: &Record) -> Vec<String> {
    let table = markdown::table(doc, record.section);
    let mut problems = Vec::new();
    // (offset, bytes, field) of each row that could be read.
    let mut rows = Vec::new();
    for row in &table.rows {
        let name = row.get("field").trim_matches('`');
        let (Some(offset), Some(shape)) =
            (number(row.get("offset")), Shape::parse(row.get("size")))
        else {
            problems.push(format!("the offset or size is not a number: {}", row.line));
            continue;
        };
        let offset = offset as usize;
        if rows.iter().any(|(_, _, seen)| *seen == name) && name != PADDING {
            problems.push(format!("`{name}` is documented twice"));
        }
        rows.push((offset, shape.bytes(), name));
        if name == PADDING {
            continue;
        }
        match record.fields.iter().find(|field| field.name == name) {
            None => problems.push(format!(
                "documents a field `{name}` that the record does not have: {}",
                row.line
            )),
            Some(field) => {
                if field.offset != offset {
                    problems.push(format!(
                        "`{name}` is at offset {} in the code, {offset} in the document",
                        field.offset
                    ));
                }
                if field.shape != shape {
                    problems.push(format!(
                        "`{name}` has size `{}` in the code, `{}` in the document",
                        field.shape.cell(),
                        row.get("size")
                    ));
                }
            }
        }
    }
    for field in &record.fields {
        if !rows.iter().any(|(_, _, name)| *name == field.name) {
            problems.push(format!(
                "`{}` (offset {}, size `{}`) is not documented",
                field.name,
                field.offset,
                field.shape.cell()
            ));
        }
    }
    rows.sort();
    let mut end = 0;
    for (offset, bytes, name) in rows {
        if offset != end {
            problems.push(format!(
                "the rows do not follow each other: one ends at {end}, `{name}` starts at {offset}"
            ));
        }
        end = offset + bytes;
    }
    if end != record.size {
        problems.push(format!(
            "the rows end at {end}, the record is {} bytes",
            record.size
        ));
    }
    problems
        .into_iter()
        .map(|problem| format!("docs/ledger.md, {:?}: {problem}", record.section))
        .collect()
}

#[test]
fn layout_tables_match_the_records() {
    let doc = markdown::read_doc("ledger.md");
    let problems: Vec<String> = records()
        .iter()
        .flat_map(|record| disagreements(&doc, record))
        .collect();
    assert!(
        problems.is_empty(),
        "the layout tables disagree with vramguard_core::ledger::layout:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_file_size_is_stated() {
    let doc = markdown::read_doc("ledger.md");
    let stated = format!("**{} bytes**", markdown::spaced(layout::FILE_SIZE as u64));
    assert!(
        markdown::section(&doc, FILE_SECTION).contains(&stated),
        "docs/ledger.md, {FILE_SECTION:?}, should state the file's size as {stated}"
    );
}

/// A magic number as the document writes it: `"VRAMGRD\0"`.
fn magic_text(magic: u64) -> String {
    let text: String = magic
        .to_le_bytes()
        .iter()
        .map(|&byte| match byte {
            0 => "\\0".to_string(),
            byte => char::from(byte).to_string(),
        })
        .collect();
    format!("\"{text}\"")
}

#[test]
fn header_values_are_the_layouts_own() {
    let fixed: [(&str, u64); 10] = [
        ("layout_version", u64::from(layout::LAYOUT_VERSION)),
        ("header_size", layout::HEADER_SIZE as u64),
        ("file_size", layout::FILE_SIZE as u64),
        ("max_processes", layout::MAX_PROCESSES as u64),
        ("max_devices", layout::MAX_DEVICES as u64),
        ("device_record_size", layout::DEVICE_RECORD_SIZE as u64),
        ("slot_record_size", layout::SLOT_RECORD_SIZE as u64),
        ("devices_offset", layout::DEVICES_OFFSET as u64),
        ("slots_offset", layout::SLOTS_OFFSET as u64),
        ("lock_base", layout::LOCK_BASE),
    ];
    let doc = markdown::read_doc("ledger.md");
    let table = markdown::table(&doc, HEADER_SECTION);
    let mut problems = Vec::new();
    for row in &table.rows {
        let field = row.get("field").trim_matches('`');
        let value = row.get("value");
        if field == "magic" {
            let magic = format!("`{}`", magic_text(layout::MAGIC));
            let truncated = format!("`{}`", magic_text(layout::TRUNCATED_MAGIC));
            if value != magic || !row.get("meaning").contains(&truncated) {
                problems.push(format!(
                    "magic: the value should be {magic}, and the meaning name {truncated}: {}",
                    row.line
                ));
            }
            continue;
        }
        match fixed.iter().find(|(name, _)| *name == field) {
            Some((_, expected)) if number(value) != Some(*expected) => problems.push(format!(
                "{field} is {} in the code, {value:?} in the document",
                markdown::spaced(*expected)
            )),
            None if !value.is_empty() => problems.push(format!(
                "{field} has no fixed value in the code, the document says {value:?}"
            )),
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "docs/ledger.md, {HEADER_SECTION:?}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn lock_bytes_are_the_layouts_own() {
    // (constant, byte past `lock_base`, whether one byte follows another per slot or record).
    let locks = [
        ("LOCK_BASE", 0, true),
        (
            "REGISTRATION_LOCK_BYTE",
            layout::REGISTRATION_LOCK_BYTE - layout::LOCK_BASE,
            false,
        ),
        (
            "CONTEXT_LOCK_BASE",
            layout::CONTEXT_LOCK_BASE - layout::LOCK_BASE,
            true,
        ),
        (
            "REBUILD_LOCK_BYTE",
            layout::REBUILD_LOCK_BYTE - layout::LOCK_BASE,
            false,
        ),
    ];
    let doc = markdown::read_doc("ledger.md");
    let table = markdown::table(&doc, LOCK_SECTION);
    let mut problems = Vec::new();
    for (constant, past, indexed) in locks {
        let expected = match (past, indexed) {
            (0, true) => "`lock_base + i`".to_string(),
            (past, true) => format!("`lock_base + {past} + i`"),
            (past, false) => format!("`lock_base + {past}`"),
        };
        let rows: Vec<_> = table
            .rows
            .iter()
            .filter(|row| row.get("constant") == format!("`{constant}`"))
            .collect();
        match rows[..] {
            [row] if row.get("byte") == expected => {}
            [row] => problems.push(format!(
                "{constant} is byte {expected} in the code, {} in the document",
                row.get("byte")
            )),
            _ => problems.push(format!(
                "{constant} should be documented once, is {} times",
                rows.len()
            )),
        }
    }
    for row in &table.rows {
        if !locks
            .iter()
            .any(|(constant, _, _)| row.get("constant") == format!("`{constant}`"))
        {
            problems.push(format!(
                "a row names no constant of the layout: {}",
                row.line
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/ledger.md, {LOCK_SECTION:?}:\n{}",
        problems.join("\n")
    );
}
