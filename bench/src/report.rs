//! Prints each figure with the baseline measured in the same run, as a Markdown
//! table that can be pasted into BENCHMARKS.md.

pub struct Report {
    rows: Vec<String>,
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    pub fn new() -> Self {
        println!("| scenario | figure | unit | same-run baseline | ratio |");
        println!("|---|---:|---|---|---:|");
        Report { rows: Vec::new() }
    }

    /// One line; `baseline` is (what, value) measured in this run, ratio = figure / baseline.
    pub fn figure(&mut self, scenario: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>) {
        let (b, ratio) = match baseline {
            Some((what, v)) => (format!("{what}: {}", human(v)), format!("{:.2}x", value / v)),
            None => ("-".into(), "-".into()),
        };
        let row = format!("| {scenario} | {} | {unit} | {b} | {ratio} |", human(value));
        println!("{row}");
        self.rows.push(row);
    }
}
