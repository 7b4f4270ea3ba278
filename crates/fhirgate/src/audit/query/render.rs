//! Writing an answer: an aligned table for a person, or JSON lines as stored.

use std::io::{self, Write};

use super::{Answer, Summary};

/// The table's columns, in order.
const HEADINGS: [&str; 10] = [
    "TIME (UTC)",
    "DECISION",
    "STATUS",
    "CLIENT",
    "USER",
    "PATIENT",
    "INTERACTION",
    "RESOURCE",
    "SCOPES",
    "REASON",
];

/// Widest a cell is shown; longer ones end in `…` (the JSON output has them whole).
const MAX_CELL: usize = 48;

/// Writes the matching records as JSON lines, each exactly as stored.
pub fn write_json<W: Write>(out: &mut W, answer: &Answer) -> io::Result<()> {
    for record in &answer.records {
        out.write_all(record.line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes the matching records as an aligned table, one row each, and a final line with the
/// count.
pub fn write_table<W: Write>(out: &mut W, answer: &Answer) -> io::Result<()> {
    let rows: Vec<[String; 10]> = answer
        .records
        .iter()
        .map(|m| match m.summary() {
            Ok(summary) => row(&summary),
            Err(_) => unreadable_row(&m.record_id),
        })
        .collect();
    if !rows.is_empty() {
        let headings = HEADINGS.map(str::to_owned);
        let widths = column_widths(std::iter::once(&headings).chain(&rows));
        write_row(out, &headings, &widths)?;
        for row in &rows {
            write_row(out, row, &widths)?;
        }
    }
    writeln!(out, "{}", count_line(answer))
}

/// The final line: how many records are shown, and how many matched when a limit cut them.
pub fn count_line(answer: &Answer) -> String {
    let shown = answer.records.len();
    let noun = |n: usize| if n == 1 { "record" } else { "records" };
    if shown < answer.matched {
        format!(
            "{shown} {} shown of {} matching (limit)",
            noun(shown),
            answer.matched
        )
    } else {
        format!("{shown} matching {}", noun(shown))
    }
}

/// One record's cells.
fn row(s: &Summary<'_>) -> [String; 10] {
    let text = |t: &Option<super::Text<'_>>| t.as_ref().map(|t| t.as_str().to_owned());
    let user = text(&s.fhir_user).or_else(|| text(&s.subject));
    [
        s.time.as_str().to_owned(),
        s.decision.as_str().to_owned(),
        s.status.map(|c| c.to_string()).unwrap_or_default(),
        text(&s.client_id).unwrap_or_default(),
        user.unwrap_or_default(),
        patient_cell(s),
        text(&s.interaction).unwrap_or_default(),
        resource_cell(s),
        text(&s.scopes).unwrap_or_default(),
        text(&s.reason).unwrap_or_default(),
    ]
    .map(|cell| cell_text(&cell))
}

/// A row for a line that matched but no longer reads (it cannot happen with the same file).
fn unreadable_row(record_id: &str) -> [String; 10] {
    let mut cells: [String; 10] = Default::default();
    cells[0] = format!("(record {record_id} unreadable)");
    cells.map(|cell| cell_text(&cell))
}

/// The patient in context, and the one the request named when it differs:
/// `pat-1`, `pat-1 -> pat-2`, or `-> pat-2` without one in context.
fn patient_cell(s: &Summary<'_>) -> String {
    let context = s.patient.as_ref().map(|t| t.as_str());
    let target = s.target_patient.as_ref().map(|t| t.as_str());
    match (context, target) {
        (Some(c), Some(t)) if c != t => format!("{c} -> {t}"),
        (Some(c), _) => c.to_owned(),
        (None, Some(t)) => format!("-> {t}"),
        (None, None) => String::new(),
    }
}

/// What was reached: `Type/id`, the type and query of a search, or else the path.
fn resource_cell(s: &Summary<'_>) -> String {
    let ty = s.resource_type.as_ref().map(|t| t.as_str());
    let id = s.resource_id.as_ref().map(|t| t.as_str());
    let query = s
        .query
        .as_ref()
        .map(|t| t.as_str())
        .filter(|q| !q.is_empty());
    let search = s
        .interaction
        .as_ref()
        .is_some_and(|i| i.as_str().starts_with("search"));
    match (ty, id) {
        (Some(ty), Some(id)) => format!("{ty}/{id}"),
        _ if search => format!("{}?{}", ty.unwrap_or(""), query.unwrap_or("")),
        (Some(ty), None) => ty.to_owned(),
        (None, _) => s
            .path
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
    }
}

/// A cell as shown: control characters replaced (a field must not drive the terminal),
/// `-` when empty, cut to [`MAX_CELL`] characters.
fn cell_text(cell: &str) -> String {
    if cell.is_empty() {
        return "-".to_owned();
    }
    let clean: String = cell
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if clean.chars().count() <= MAX_CELL {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// The width of each column: its widest cell, in characters.
fn column_widths<'r>(rows: impl Iterator<Item = &'r [String; 10]>) -> [usize; 10] {
    let mut widths = [0; 10];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

/// One line of the table: cells padded to their column, two spaces apart.
fn write_row<W: Write>(out: &mut W, cells: &[String; 10], widths: &[usize; 10]) -> io::Result<()> {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            line.push_str(cell);
            let pad = width - cell.chars().count() + 2;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    writeln!(out, "{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(line: &str) -> Summary<'_> {
        serde_json::from_str(line).unwrap()
    }

    const BASE: &str = r#""record_id":"r","time":"2026-12-04T03:45:12.345Z","decision":"allow""#;

    #[test]
    fn the_patient_cell_shows_a_differing_target() {
        let cell = |extra: &str| patient_cell(&summary(&format!("{{{BASE}{extra}}}")));
        assert_eq!(cell(r#","patient":"pat-1""#), "pat-1");
        assert_eq!(
            cell(r#","patient":"pat-1","target_patient":"pat-1""#),
            "pat-1"
        );
        assert_eq!(
            cell(r#","patient":"pat-1","target_patient":"pat-2""#),
            "pat-1 -> pat-2"
        );
        assert_eq!(cell(r#","target_patient":"pat-2""#), "-> pat-2");
        assert_eq!(cell(""), "");
    }

    #[test]
    fn the_resource_cell_shows_an_instance_or_a_search() {
        let cell = |extra: &str| resource_cell(&summary(&format!("{{{BASE}{extra}}}")));
        assert_eq!(
            cell(r#","interaction":"read","resource_type":"Patient","resource_id":"pat-1""#),
            "Patient/pat-1"
        );
        assert_eq!(
            cell(
                r#","interaction":"search-type","resource_type":"Observation","query":"patient=pat-1&code=x""#
            ),
            "Observation?patient=pat-1&code=x"
        );
        assert_eq!(cell(r#","path":"/fhir/metadata""#), "/fhir/metadata");
    }

    #[test]
    fn cells_are_cleaned_and_cut() {
        assert_eq!(cell_text(""), "-");
        assert_eq!(cell_text("a\u{1b}[2Jb"), "a\u{fffd}[2Jb");
        let long = "x".repeat(100);
        let cut = cell_text(&long);
        assert_eq!(cut.chars().count(), MAX_CELL);
        assert!(cut.ends_with('…'));
    }
}
