//! The one reader of Prometheus/OpenMetrics text the tests and benchmarks use: parse an
//! exposition once, then ask for a sample exactly as exposed or a family's sum.

use std::collections::BTreeMap;

/// One `/metrics` scrape: `name{labels}` (exactly as exposed) → value.
#[derive(Debug, Clone, Default)]
pub struct Exposition(BTreeMap<String, f64>);

impl Exposition {
    /// Parses the text; comments, `# EOF`, blank and unparsable lines are skipped.
    pub fn parse(text: &str) -> Exposition {
        Exposition(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (key, value) = l.rsplit_once(' ')?;
                    Some((key.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// `GET url` and parse it.
    pub async fn scrape(url: &str) -> anyhow::Result<Exposition> {
        let resp = crate::client::http()
            .get(url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?;
        Ok(Exposition::parse(&resp.text().await?))
    }

    /// The sample named exactly `sample` (`name` or `name{labels}`; a trailing space, as in
    /// the exposition's line, is ignored).
    pub fn get(&self, sample: &str) -> Option<f64> {
        self.0.get(sample.trim_end()).copied()
    }

    /// [`Exposition::get`], 0 when absent (a counter never incremented is not exposed).
    pub fn value(&self, sample: &str) -> f64 {
        self.get(sample).unwrap_or(0.0)
    }

    /// The sum of every series of `name` whose labels contain `label` (`""`: all series).
    pub fn sum(&self, name: &str, label: &str) -> f64 {
        self.0
            .iter()
            .filter(|(key, _)| {
                let Some(rest) = key.strip_prefix(name) else {
                    return false;
                };
                match rest.strip_prefix('{') {
                    Some(labels) => labels.contains(label),
                    None => rest.is_empty() && label.is_empty(),
                }
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Every sample, by key.
    pub fn samples(&self) -> &BTreeMap<String, f64> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE a counter\na_total 2\na_total{x=\"1\"} 3\na_total{x=\"2\"} 4\n\
        a_total_more 100\nb 1.5\n# EOF\n";

    #[test]
    fn samples_are_exact_and_sums_stay_within_their_family() {
        let e = Exposition::parse(TEXT);
        assert_eq!(e.get("a_total{x=\"1\"}"), Some(3.0));
        assert_eq!(e.value("missing"), 0.0);
        assert_eq!(e.sum("a_total", ""), 9.0);
        assert_eq!(e.sum("a_total", "x=\"2\""), 4.0);
        assert_eq!(e.sum("b", ""), 1.5);
    }
}
