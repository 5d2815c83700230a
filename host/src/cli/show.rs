//! How the client subcommands show the server's answers to a person: lists as
//! aligned tables, documents as indented JSON. `--json` prints the answer as the
//! server sent it instead (for scripts); anything this module does not recognise is
//! printed as it came, so a newer server's answer is never lost in translation.

use serde_json::Value;

/// What an answer is, to choose its form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A command's reply, an entity's state, a view value: indented JSON.
    Document,
    /// `GET /v1/entities/{type}/{id}/events` or `GET /v1/events?tag=`.
    Events,
    /// `GET /v1/components`.
    Components,
    /// `PUT` or `activate` of a component: one line.
    ComponentVersion,
    /// `GET /v1/projections`.
    Projections,
    /// `PUT` or `activate` of a projection: one line.
    ProjectionVersion,
    /// `GET /v1/views/{name}?prefix=`: a table of keys and values.
    ViewEntries,
}

/// The text to print for `answer`, the server's JSON body `text`.
pub fn show(answer: Answer, text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else { return text.to_string() };
    let shown = match answer {
        Answer::Document => None,
        Answer::Events => events(&v),
        Answer::Components => components(&v),
        Answer::ComponentVersion => component_version(&v),
        Answer::Projections => projections(&v),
        Answer::ProjectionVersion => projection_version(&v),
        Answer::ViewEntries => view_entries(&v),
    };
    shown.unwrap_or_else(|| serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_string()))
}

/// Rows under a header, each column as wide as its widest cell; the last column
/// is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// A JSON value in one line: strings bare, the rest as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn events(v: &Value) -> Option<String> {
    let list = v["events"].as_array()?;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| ["offset", "persistence_id", "seq_nr", "manifest", "payload"].iter().map(|k| cell(&e[*k])).collect())
        .collect();
    let mut out = table(&["OFFSET", "ENTITY", "SEQ", "MANIFEST", "PAYLOAD"], &rows);
    if list.is_empty() {
        out.push_str("\n(no events)");
    }
    // Where to read on: the rest of a full page, or events written later (tag
    // queries say it; entity pages go on by seq nr).
    if let Some(next) = v["next_from"].as_u64() {
        out.push_str(&format!("\ncontinue with: --from {next}"));
    }
    Some(out)
}

fn components(v: &Value) -> Option<String> {
    let rows: Vec<Vec<String>> = v["components"]
        .as_array()?
        .iter()
        .map(|c| {
            vec![
                cell(&c["entity_type"]),
                cell(&c["version"]),
                versions(&c["versions"]),
                cell(&c["state_version"]),
                short_hash(&c["hash"]),
                cell(&c["size"]),
            ]
        })
        .collect();
    Some(table(&["TYPE", "ACTIVE", "VERSIONS", "STATE VERSION", "HASH", "BYTES"], &rows))
}

fn component_version(v: &Value) -> Option<String> {
    Some(format!(
        "{} version {} is active (versions {}, hash {})",
        v["entity_type"].as_str()?,
        v["version"].as_u64()?,
        versions(&v["versions"]),
        short_hash(&v["hash"])
    ))
}

fn projections(v: &Value) -> Option<String> {
    let rows: Vec<Vec<String>> = v["projections"]
        .as_array()?
        .iter()
        .map(|p| {
            let tags =
                p["tags"].as_array().map(|t| t.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_default();
            let rebuild = match &p["rebuild"] {
                Value::Null => String::new(),
                r => format!(" (rebuilding: offset {}, {})", cell(&r["offset"]), cell(&r["status"])),
            };
            vec![
                cell(&p["name"]),
                cell(&p["version"]),
                tags,
                format!("{}{rebuild}", cell(&p["status"])),
                cell(&p["offset"]),
                cell(&p["head"]),
                cell(&p["lag"]),
                cell(&p["error"]),
            ]
        })
        .collect();
    Some(table(&["NAME", "VERSION", "TAGS", "STATUS", "OFFSET", "HEAD", "LAG", "ERROR"], &rows))
}

fn projection_version(v: &Value) -> Option<String> {
    Some(format!(
        "projection {} version {} is active: {}, offset {} of {}",
        v["name"].as_str()?,
        v["version"].as_u64()?,
        cell(&v["status"]),
        cell(&v["offset"]),
        cell(&v["head"])
    ))
}

fn view_entries(v: &Value) -> Option<String> {
    let list = v["entries"].as_array()?;
    let rows: Vec<Vec<String>> = list.iter().map(|e| vec![cell(&e["key"]), cell(&e["value"])]).collect();
    let mut out = table(&["KEY", "VALUE"], &rows);
    if let Some(next) = v["next_from_key"].as_str() {
        out.push_str(&format!("\nnext page: --from-key {next}"));
    }
    Some(out)
}

fn versions(v: &Value) -> String {
    v.as_array().map(|l| l.iter().map(cell).collect::<Vec<_>>().join(",")).unwrap_or_else(|| cell(v))
}

fn short_hash(v: &Value) -> String {
    cell(v).chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_become_aligned_tables() {
        let text = r#"{"components":[
            {"entity_type":"bank-account","version":2,"versions":[1,2],"state_version":1,"hash":"0123456789abcdef","size":100},
            {"entity_type":"t","version":1,"versions":[1],"state_version":3,"hash":"ff","size":9}]}"#;
        let shown = show(Answer::Components, text);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], "TYPE          ACTIVE  VERSIONS  STATE VERSION  HASH          BYTES");
        assert_eq!(lines[1], "bank-account  2       1,2       1              0123456789ab  100");
        assert_eq!(lines[2], "t             1       1         3              ff            9");
    }

    #[test]
    fn events_show_their_payload_in_one_line_and_the_next_page() {
        let text = r#"{"events":[{"offset":7,"persistence_id":"a|1","seq_nr":2,"manifest":"Deposited",
            "payload":{"amount":9}}],"next_from":8}"#;
        let shown = show(Answer::Events, text);
        assert_eq!(
            shown,
            "OFFSET  ENTITY  SEQ  MANIFEST   PAYLOAD\n7       a|1     2    Deposited  {\"amount\":9}\ncontinue with: --from 8"
        );
    }

    #[test]
    fn documents_are_indented_and_the_unknown_is_printed_as_it_came() {
        assert_eq!(show(Answer::Document, r#"{"balance":5}"#), "{\n  \"balance\": 5\n}");
        assert_eq!(show(Answer::Components, r#"{"other":1}"#), "{\n  \"other\": 1\n}");
        assert_eq!(show(Answer::Events, "not json"), "not json");
    }
}
