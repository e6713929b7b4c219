//! Prometheus text as Ravel's processes serve it, parsed for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `name{a="x",b="y"} value` lines → (name, sorted labels) → value.
pub type Samples = BTreeMap<(String, BTreeSet<(String, String)>), f64>;

/// Parses Prometheus text (comments and empty lines skipped).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeSet::new()),
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.insert((name, labels), value);
    }
    out
}

/// The sample `name` with exactly these labels.
pub fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeSet<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.get(&(name.to_string(), want)).copied()
}

/// GET `http://{addr}{path}`: status and body (5 s timeout).
pub async fn scrape(addr: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}
