//! Metrics in the Prometheus text format (version 0.0.4) for `GET /api/metrics`: one
//! process-wide registry that any module adds counters and gauges to, plus collectors
//! that compute values at scrape time from the state that holds them (the database).
//! Knows names, labels, numbers and the format; never reads state itself.
//!
//! To add a metric:
//! * something that happens: `metrics::counter("replgate_x_total", "What it counts.",
//!   &[("listener", "api")]).inc()`; keep the handle where it is hot (it is an `Arc`),
//! * a level someone sets: `metrics::gauge(..).set(v)`,
//! * a value read from state when scraped: `metrics::collect(Box::new(move |out| ..))`,
//!   calling `out.gauge(..)`/`out.counter(..)` for each sample.
//!
//! Names are `replgate_` + snake case, counters end in `_total`, times are unix seconds
//! (`_seconds`), sizes bytes (`_bytes`). `tests/it/metrics.rs` parses the whole
//! exposition with the Prometheus client library's own parser.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::sync::lock;

/// Sorted label pairs, as one key.
type Labels = Vec<(&'static str, String)>;

/// What a collector is given at scrape time to report samples.
pub(crate) type Collector = Box<dyn Fn(&mut Exposition) + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A monotonically growing count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// A value that goes up and down (stored as the bits of an `f64`).
#[derive(Clone, Debug)]
pub(crate) struct Gauge(Arc<AtomicU64>);

impl Gauge {
    pub(crate) fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Labels, Arc<AtomicU64>>,
}

/// The metrics of one process (see [`global`]); tests make their own.
#[derive(Default)]
pub(crate) struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
    collectors: Mutex<Vec<Collector>>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry::default()
    }

    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
    ) -> Arc<AtomicU64> {
        check_name(name);
        let mut key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        key.sort();
        // A poisoned lock only means another thread panicked while adding a series; the
        // map itself is whole.
        let mut families = lock(&self.families);
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        assert_eq!(family.kind, kind, "metric {name} used as two kinds");
        let initial = match kind {
            Kind::Counter => 0,
            Kind::Gauge => 0f64.to_bits(),
        };
        family
            .series
            .entry(key)
            .or_insert_with(|| Arc::new(AtomicU64::new(initial)))
            .clone()
    }

    /// The counter `name` with `labels`, created at zero the first time.
    pub(crate) fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        Counter(self.series(name, help, Kind::Counter, labels))
    }

    /// The gauge `name` with `labels`, created at zero the first time.
    pub(crate) fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        Gauge(self.series(name, help, Kind::Gauge, labels))
    }

    /// Adds a collector, run at every scrape.
    pub(crate) fn collect(&self, c: Collector) {
        lock(&self.collectors).push(c);
    }

    /// The whole exposition: stored series, then what the collectors report.
    #[cfg(test)]
    pub(crate) fn render(&self) -> String {
        self.render_with(|_| {})
    }

    /// [`Registry::render`] with `extra` samples computed by the caller (state that the
    /// caller holds, such as the database).
    pub(crate) fn render_with(&self, extra: impl FnOnce(&mut Exposition)) -> String {
        let mut out = Exposition::default();
        {
            let families = lock(&self.families);
            for (name, f) in families.iter() {
                for (labels, v) in &f.series {
                    let bits = v.load(Ordering::Relaxed);
                    let value = match f.kind {
                        Kind::Counter => bits as f64,
                        Kind::Gauge => f64::from_bits(bits),
                    };
                    out.sample(name, f.help, f.kind, labels.clone(), value);
                }
            }
        }
        for c in lock(&self.collectors).iter() {
            c(&mut out);
        }
        extra(&mut out);
        out.text()
    }
}

/// One metric's samples in a scrape: its help, its kind, each labelled value, and lines
/// rendered beforehand ([`Exposition::lines`]).
type Samples = (&'static str, Kind, Vec<(Labels, f64)>, String);

/// Samples gathered for one scrape, grouped by metric name.
#[derive(Default)]
pub(crate) struct Exposition {
    families: BTreeMap<&'static str, Samples>,
}

impl Exposition {
    fn sample(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: Labels,
        value: f64,
    ) {
        check_name(name);
        let family = self
            .families
            .entry(name)
            .or_insert_with(|| (help, kind, Vec::new(), String::new()));
        family.2.push((labels, value));
    }

    /// Adds sample lines rendered beforehand by [`line`] to the family `name` (a counter
    /// when `counter`, else a gauge), after its other samples: for a family of thousands
    /// of series whose lines are kept between scrapes.
    pub(crate) fn lines(
        &mut self,
        name: &'static str,
        help: &'static str,
        counter: bool,
        lines: &str,
    ) {
        check_name(name);
        let kind = if counter { Kind::Counter } else { Kind::Gauge };
        let family = self
            .families
            .entry(name)
            .or_insert_with(|| (help, kind, Vec::new(), String::new()));
        family.3.push_str(lines);
    }

    fn labels(labels: &[(&'static str, &str)]) -> Labels {
        let mut l: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        l.sort();
        l
    }

    /// Reports a gauge sample computed now.
    pub(crate) fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.sample(name, help, Kind::Gauge, Self::labels(labels), value);
    }

    /// Reports a counter sample computed now (a total kept elsewhere, e.g. in the database).
    pub(crate) fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.sample(name, help, Kind::Counter, Self::labels(labels), value);
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, (help, kind, samples, rendered)) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
            for (labels, value) in samples {
                write_line(
                    &mut out,
                    name,
                    labels.iter().map(|(k, v)| (*k, v.as_str())),
                    *value,
                );
            }
            out.push_str(rendered);
        }
        out
    }
}

/// One sample line of the exposition, `labels` sorted by name, for
/// [`Exposition::lines`].
pub(crate) fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    write_line(out, name, labels.iter().copied(), value);
}

fn write_line<'a>(
    out: &mut String,
    name: &str,
    labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    value: f64,
) {
    out.push_str(name);
    if labels.len() > 0 {
        out.push('{');
        for (i, (k, v)) in labels.enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// The registry of this process.
pub(crate) fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::new)
}

/// [`Registry::counter`] of the [`global`] registry.
pub(crate) fn counter(
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
) -> Counter {
    global().counter(name, help, labels)
}

/// [`Registry::gauge`] of the [`global`] registry.
pub(crate) fn gauge(
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
) -> Gauge {
    global().gauge(name, help, labels)
}

/// [`Registry::collect`] on the [`global`] registry.
pub(crate) fn collect(c: Collector) {
    global().collect(c)
}

/// Metric and label names are fixed in code; a bad one is a bug caught by any test that
/// renders it.
fn check_name(name: &str) {
    let ok = name.starts_with("replgate_")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    assert!(ok, "metric name {name:?} is not replgate_ and snake case");
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, the rest as Rust prints them (which the
/// format's float grammar reads), infinities and NaN spelled as the format wants.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_once_with_help_type_and_sorted_labels() {
        let r = Registry::new();
        r.counter(
            "replgate_t_total",
            "Things.",
            &[("listener", "api"), ("a", "1")],
        )
        .add(3);
        r.counter(
            "replgate_t_total",
            "Things.",
            &[("a", "1"), ("listener", "api")],
        )
        .inc();
        r.gauge("replgate_g", "A level.", &[]).set(1.5);
        r.collect(Box::new(|out| {
            out.gauge(
                "replgate_c",
                "Computed\nnow.",
                &[("role", "say \"hi\"\\")],
                2.0,
            )
        }));
        assert_eq!(
            r.render(),
            "# HELP replgate_c Computed\\nnow.\n# TYPE replgate_c gauge\n\
             replgate_c{role=\"say \\\"hi\\\"\\\\\"} 2\n\
             # HELP replgate_g A level.\n# TYPE replgate_g gauge\nreplgate_g 1.5\n\
             # HELP replgate_t_total Things.\n# TYPE replgate_t_total counter\n\
             replgate_t_total{a=\"1\",listener=\"api\"} 4\n"
        );
    }

    /// Lines rendered beforehand read as the same samples reported one by one.
    #[test]
    fn rendered_lines_equal_samples_reported_one_by_one() {
        let labels = [("reason", "say \"hi\""), ("system", "7")];
        let mut one = Exposition::default();
        one.counter("replgate_x_total", "X.", &labels, 3.0);
        one.gauge("replgate_y", "Y.", &[], 0.5);
        let mut kept = String::new();
        line(&mut kept, "replgate_x_total", &labels, 3.0);
        let mut other = Exposition::default();
        other.lines("replgate_x_total", "X.", true, &kept);
        other.gauge("replgate_y", "Y.", &[], 0.5);
        assert_eq!(one.text(), other.text());
        assert!(kept.starts_with("replgate_x_total{reason=\"say \\\"hi\\\"\",system=\"7\"} 3\n"));
    }

    #[test]
    fn gauges_set_and_numbers_follow_the_format() {
        let r = Registry::new();
        r.gauge("replgate_g", "g", &[]).set(1.5);
        assert!(r.render().contains("replgate_g 1.5\n"), "{}", r.render());
        assert_eq!(number(1_700_000_000.0), "1700000000");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(0.25), "0.25");
    }

    #[test]
    #[should_panic(expected = "snake case")]
    fn names_outside_the_convention_are_a_bug() {
        Registry::new().counter("Bad-Name", "x", &[]);
    }
}
