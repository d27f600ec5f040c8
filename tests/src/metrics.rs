//! Reading a process's Prometheus page in tests: the page itself, and one series' value.

/// The text of a metrics page (or any page) at `url`; panics when it cannot be read.
pub async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The value of the series written exactly `name` (with its labels) on a metrics page.
pub fn series(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::series;

    #[test]
    fn a_series_is_found_by_its_exact_name() {
        let page = "# TYPE x counter\nx_total{a=\"1\"} 3\nx_total 7\nx_total_more 9\n";
        assert_eq!(series(page, "x_total"), Some(7.0));
        assert_eq!(series(page, "x_total{a=\"1\"}"), Some(3.0));
        assert_eq!(series(page, "y_total"), None);
    }
}
