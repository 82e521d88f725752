//! The picture of a run: its steps on a time axis, the write outage window, the heartbeat's
//! acknowledged writes per second, each DNS stage's weight and analysis verdict, and any rollback,
//! as an inline SVG (no script, no external resource) that prints in colour and in grey (every
//! mark is told apart by shape, stroke or label too, never by colour alone); and the same
//! writes as a text sparkline for `cutover status`.
//!
//! Built from typed records and the audit's steps only; must not read files or contact services.

use super::html::escape;
use super::model::{StepReport, StepStatus};
use crate::engine::event::Event;
use crate::engine::log::Record;
use crate::steps::journal::Journal;
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// One step's bar: when it ran and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Step id.
    pub id: String,
    /// Seconds from the run's start to the step's start.
    pub from_s: f64,
    /// Seconds from the run's start to the step's outcome (or the run's end when unfinished).
    pub to_s: f64,
    /// Its outcome.
    pub status: StepStatus,
}

/// One DNS stage: when its change was INSYNC, the weight it gave the new target, and its
/// analysis window's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMark {
    /// 1-based stage number.
    pub stage: usize,
    /// Number of stages.
    pub of: usize,
    /// Seconds from the run's start to INSYNC.
    pub at_s: f64,
    /// The new target's weight after the stage, percent, when the step's `stages` says it.
    pub weight: Option<i64>,
    /// The analysis window's verdict: `Some(true)` passed, `Some(false)` failed, `None` none ran
    /// (or the run stopped first).
    pub passed: Option<bool>,
}

/// Everything the picture shows, in seconds from the run's first record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Seconds from the first record to the last.
    pub span_s: f64,
    /// Steps that started, in the order they did.
    pub bars: Vec<Bar>,
    /// The measured write outage (the heartbeat's longest gap): start and end, seconds.
    pub outage: Option<(f64, f64)>,
    /// Acknowledged writes per second over every heartbeat path: the first second's offset
    /// from the run's start, then one count per second.
    pub writes: Option<(f64, Vec<u32>)>,
    /// DNS stages in order.
    pub stages: Vec<StageMark>,
    /// When all weight returned to the old target, seconds.
    pub returned_s: Option<f64>,
    /// The rollback: from its start to the run's end, seconds.
    pub rollback: Option<(f64, f64)>,
}

fn parse_ts(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Seconds from `t0` to `ts`.
fn since(t0: DateTime<Utc>, ts: &str) -> Option<f64> {
    parse_ts(ts).map(|t| (t - t0).num_milliseconds() as f64 / 1000.0)
}

/// Builds the timeline of a run from its typed records (`crate::engine::event::known`) and the
/// audit's steps (for their start, outcome and rendered `stages`).
pub fn build(typed: &[(&Record, Event)], steps: &[&StepReport]) -> Timeline {
    let Some(t0) = typed.first().and_then(|(r, _)| parse_ts(&r.ts)) else {
        return Timeline::default();
    };
    let span_s = typed
        .last()
        .and_then(|(r, _)| since(t0, &r.ts))
        .unwrap_or(0.0)
        .max(0.001);
    let mut bars: Vec<Bar> = steps
        .iter()
        .filter_map(|s| {
            let from_s = since(t0, s.started.as_deref()?)?;
            let to_s = s
                .finished
                .as_deref()
                .and_then(|f| since(t0, f))
                .unwrap_or(span_s);
            Some(Bar {
                id: s.id.clone(),
                from_s,
                to_s: to_s.max(from_s),
                status: s.status,
            })
        })
        .collect();
    bars.sort_by(|a, b| a.from_s.total_cmp(&b.from_s));

    let stage_weight = |step: Option<&str>, stage: usize| -> Option<i64> {
        let s = steps.iter().find(|s| Some(s.id.as_str()) == step)?;
        s.params.get("stages")?.get(stage.checked_sub(1)?)?.as_i64()
    };
    let mut t = Timeline {
        span_s,
        bars,
        ..Timeline::default()
    };
    let mut series: Vec<(f64, Vec<u32>)> = Vec::new();
    // The number of stages, from the intent record before each stage's INSYNC.
    let mut of = 0;
    for (r, e) in typed {
        let at = since(t0, &r.ts).unwrap_or(0.0);
        match e {
            Event::Journal(Journal::TrafficStage(st)) => of = st.of,
            Event::Journal(Journal::TrafficStageInsync(i)) => {
                t.stages.retain(|m| m.stage != i.stage);
                t.stages.push(StageMark {
                    stage: i.stage,
                    of,
                    at_s: at,
                    weight: stage_weight(r.step.as_deref(), i.stage),
                    passed: None,
                });
            }
            Event::Journal(Journal::Analysis(a)) if a.stage > 0 => {
                if let Some(m) = t.stages.iter_mut().find(|m| m.stage == a.stage) {
                    m.passed = Some(a.verdict.passed);
                }
            }
            Event::Journal(Journal::TrafficReturnedInsync(_)) => t.returned_s = Some(at),
            Event::RollbackStarted(_) if t.rollback.is_none() => t.rollback = Some((at, span_s)),
            Event::Heartbeat(data) => {
                let at = |t: Option<DateTime<Utc>>| {
                    t.map(|t| (t - t0).num_milliseconds() as f64 / 1000.0)
                };
                if let (Some(from), Some(to)) = (at(data.gap_from), at(data.gap_to)) {
                    t.outage = Some((from, to));
                }
                for p in &data.paths {
                    let Some(start) = at(p.started_at) else {
                        continue;
                    };
                    series.push((start, p.acked_per_second.clone()));
                }
            }
            _ => {}
        }
    }
    t.stages.sort_by_key(|m| m.stage);
    t.writes = merge_series(&series);
    t
}

/// Sums per-second series that start at different offsets onto the earliest one's seconds.
fn merge_series(series: &[(f64, Vec<u32>)]) -> Option<(f64, Vec<u32>)> {
    let start = series.iter().map(|(s, _)| *s).min_by(f64::total_cmp)?;
    let mut out: Vec<u32> = Vec::new();
    for (s, counts) in series {
        let shift = (s - start).round().max(0.0) as usize;
        if out.len() < shift + counts.len() {
            out.resize(shift + counts.len(), 0);
        }
        for (i, c) in counts.iter().enumerate() {
            out[shift + i] += c;
        }
    }
    Some((start, out))
}

/// Width of the drawing, user units (the SVG scales to the page's width).
const WIDTH: f64 = 720.0;
/// Left margin for the row labels.
const LABEL_W: f64 = 150.0;
/// Right margin.
const RIGHT: f64 = 12.0;
/// One step row's height.
const ROW_H: f64 = 14.0;
/// Height of the writes chart.
const CHART_H: f64 = 48.0;

/// A readable duration: `850 ms`, `12.3 s`, `4 min 05 s`.
fn dur(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// Tick spacing for an axis `span` seconds long: about six ticks at a round step.
fn tick_step(span: f64) -> f64 {
    let rough = span / 6.0;
    [
        0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| *s >= rough)
    .unwrap_or(7200.0)
}

/// The picture as an inline SVG element. Marks carry classes a reader (or test) can find:
/// `step` bars (`status-<label>`), `outage`, `dns-stage` lines (`data-stage`), `writes`,
/// `rollback`, `returned`.
pub fn svg(t: &Timeline) -> String {
    let plot_w = WIDTH - LABEL_W - RIGHT;
    let x = |s: f64| LABEL_W + (s / t.span_s).clamp(0.0, 1.0) * plot_w;
    let top = 34.0;
    let rows_h = t.bars.len() as f64 * ROW_H;
    let chart_top = top + rows_h + 10.0;
    let height = chart_top + CHART_H + 30.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height:.0}\" width=\"100%\" role=\"img\" aria-label=\"The run on a time axis\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"8\">"
    );
    o.push_str("<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#7a1f1f\" stroke-width=\"2\"/></pattern></defs>\n");
    // Time axis with ticks.
    let step = tick_step(t.span_s);
    let mut s = 0.0;
    while s <= t.span_s + 1e-9 {
        let _ = writeln!(
            o,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#ccc\" stroke-width=\"0.5\"/><text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\" fill=\"#333\">{4}</text>",
            x(s),
            top - 4.0,
            chart_top + CHART_H,
            top - 6.0,
            if s == 0.0 { "0 s".to_string() } else { dur(s) }
        );
        s += step;
    }
    // Rollback: a hatched band from its start to the end.
    if let Some((from, to)) = t.rollback {
        let _ = writeln!(
            o,
            "<rect class=\"rollback\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"url(#hatch)\" fill-opacity=\"0.35\" stroke=\"#7a1f1f\" stroke-width=\"0.8\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#7a1f1f\" font-weight=\"bold\">rollback</text>",
            x(from),
            (x(to) - x(from)).max(1.5),
            rows_h + 10.0 + CHART_H,
            x(from) + 2.0,
            height - 8.0
        );
    }
    // Step bars.
    for (i, b) in t.bars.iter().enumerate() {
        let y = top + i as f64 * ROW_H;
        let (fill, stroke) = match b.status {
            StepStatus::Completed | StepStatus::Planned => ("#4a78b5", "#1f3f66"),
            StepStatus::Failed => ("#c0392b", "#000"),
            StepStatus::Skipped => ("#fff", "#777"),
            StepStatus::Unfinished | StepStatus::NotRun => ("#ddd", "#555"),
        };
        let dash = if b.status == StepStatus::Failed {
            " stroke-dasharray=\"2 1\""
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#111\">{}</text><rect class=\"step status-{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"0.8\"{dash}><title>{} {} ({})</title></rect>",
            LABEL_W - 4.0,
            y + ROW_H - 4.0,
            escape(&b.id),
            b.status.label().to_lowercase().replace(' ', "-"),
            x(b.from_s),
            y + 2.0,
            (x(b.to_s) - x(b.from_s)).max(1.5),
            ROW_H - 4.0,
            escape(&b.id),
            b.status.label(),
            dur(b.to_s - b.from_s)
        );
        if b.status == StepStatus::Failed {
            let _ = writeln!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#000\" font-weight=\"bold\">FAILED</text>",
                x(b.to_s) + 3.0,
                y + ROW_H - 4.0
            );
        }
    }
    // The write outage: a band over every row, outlined and labelled.
    if let Some((from, to)) = t.outage {
        let _ = writeln!(
            o,
            "<rect class=\"outage\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#e67e22\" fill-opacity=\"0.35\" stroke=\"#000\" stroke-width=\"0.8\" stroke-dasharray=\"3 2\"><title>write outage {}</title></rect><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#000\" font-weight=\"bold\">write outage {}</text>",
            x(from),
            top - 2.0,
            (x(to) - x(from)).max(2.0),
            rows_h + 12.0 + CHART_H,
            dur(to - from),
            (x(to) + 3.0).min(WIDTH - 90.0),
            height - 18.0,
            dur(to - from)
        );
    }
    // DNS stages: a vertical line each, labelled with the weight and the verdict.
    for m in &t.stages {
        let verdict = match m.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "no analysis",
        };
        let weight = m
            .weight
            .map(|w| format!("{w}%"))
            .unwrap_or_else(|| format!("stage {}/{}", m.stage, m.of));
        let _ = writeln!(
            o,
            "<line class=\"dns-stage\" data-stage=\"{}\" data-of=\"{}\" x1=\"{2:.1}\" y1=\"{3:.1}\" x2=\"{2:.1}\" y2=\"{4:.1}\" stroke=\"#000\" stroke-width=\"1\"/><polygon points=\"{2:.1},{3:.1} {5:.1},{6:.1} {7:.1},{6:.1}\" fill=\"#000\"/><text x=\"{2:.1}\" y=\"{8:.1}\" text-anchor=\"middle\" fill=\"#000\">DNS {9} {10}</text>",
            m.stage,
            m.of,
            x(m.at_s),
            top - 2.0,
            chart_top + CHART_H,
            x(m.at_s) - 3.0,
            top - 7.0,
            x(m.at_s) + 3.0,
            12.0 + (m.stage % 2) as f64 * 8.0,
            escape(&weight),
            verdict
        );
    }
    if let Some(at) = t.returned_s {
        let _ = writeln!(
            o,
            "<line class=\"returned\" x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#7a1f1f\" stroke-width=\"1.2\" stroke-dasharray=\"4 2\"/><text x=\"{0:.1}\" y=\"28\" text-anchor=\"middle\" fill=\"#7a1f1f\">all weight back</text>",
            x(at),
            top - 2.0,
            chart_top + CHART_H
        );
    }
    // Acknowledged writes per second.
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#111\">acked writes/s</text><line x1=\"{LABEL_W}\" y1=\"{2:.1}\" x2=\"{3:.1}\" y2=\"{2:.1}\" stroke=\"#999\" stroke-width=\"0.5\"/>",
        LABEL_W - 4.0,
        chart_top + CHART_H / 2.0,
        chart_top + CHART_H,
        WIDTH - RIGHT
    );
    if let Some((start, counts)) = &t.writes {
        let peak = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        let base = chart_top + CHART_H;
        let mut pts = format!("{:.1},{base:.1}", x(*start));
        for (i, c) in counts.iter().enumerate() {
            let y = base - (*c as f64 / peak) * (CHART_H - 4.0);
            let _ = write!(
                pts,
                " {:.1},{y:.1} {:.1},{y:.1}",
                x(start + i as f64),
                x(start + i as f64 + 1.0)
            );
        }
        let _ = write!(pts, " {:.1},{base:.1}", x(start + counts.len() as f64));
        let _ = writeln!(
            o,
            "<polygon class=\"writes\" points=\"{pts}\" fill=\"#7f8c8d\" fill-opacity=\"0.5\" stroke=\"#333\" stroke-width=\"0.6\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#333\">peak {} /s</text>",
            // In the label column under "acked writes/s", clear of the area's top.
            LABEL_W - 4.0,
            chart_top + CHART_H / 2.0 + 12.0,
            peak as u32
        );
    }
    o.push_str("</svg>\n");
    o
}

/// The writes per second as a one-line sparkline (`▁▂▃▅▇`), at most `width` characters (each
/// the mean of its seconds); empty when no heartbeat ran.
pub fn sparkline(t: &Timeline, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let Some((_, counts)) = &t.writes else {
        return String::new();
    };
    if counts.is_empty() || width == 0 {
        return String::new();
    }
    let per = counts.len().div_ceil(width);
    let means: Vec<f64> = counts
        .chunks(per)
        .map(|c| c.iter().map(|x| *x as f64).sum::<f64>() / c.len() as f64)
        .collect();
    let peak = means.iter().copied().fold(0.0, f64::max).max(1.0);
    means
        .iter()
        .map(|m| {
            if *m == 0.0 {
                ' '
            } else {
                BARS[((m / peak) * 7.0).round() as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timeline {
        Timeline {
            span_s: 60.0,
            bars: vec![
                Bar {
                    id: "replicate".into(),
                    from_s: 0.0,
                    to_s: 20.0,
                    status: StepStatus::Completed,
                },
                Bar {
                    id: "dns".into(),
                    from_s: 20.0,
                    to_s: 40.0,
                    status: StepStatus::Failed,
                },
            ],
            outage: Some((41.0, 41.7)),
            writes: Some((1.0, vec![40, 50, 0, 50])),
            stages: vec![
                StageMark {
                    stage: 1,
                    of: 3,
                    at_s: 25.0,
                    weight: Some(10),
                    passed: Some(true),
                },
                StageMark {
                    stage: 2,
                    of: 3,
                    at_s: 33.0,
                    weight: Some(50),
                    passed: Some(false),
                },
            ],
            returned_s: Some(38.0),
            rollback: Some((40.0, 60.0)),
        }
    }

    #[test]
    fn the_picture_has_the_outage_one_mark_per_stage_the_rollback_and_the_writes() {
        let s = svg(&sample());
        assert!(s.starts_with("<svg class=\"timeline\""));
        assert_eq!(s.matches("class=\"outage\"").count(), 1);
        assert_eq!(s.matches("class=\"dns-stage\"").count(), 2);
        assert!(s.contains("data-stage=\"2\""));
        assert!(s.contains("DNS 50% FAIL"), "{s}");
        assert!(s.contains("write outage 700 ms"), "{s}");
        assert_eq!(s.matches("class=\"rollback\"").count(), 1);
        assert_eq!(s.matches("class=\"writes\"").count(), 1);
        assert!(s.contains("class=\"step status-failed\""));
        assert!(!s.contains("<script"));
    }

    #[test]
    fn series_from_two_paths_add_up_on_shared_seconds() {
        let m = merge_series(&[(2.0, vec![1, 1, 1]), (3.0, vec![5, 5])]).unwrap();
        assert_eq!(m, (2.0, vec![1, 6, 6]));
        assert_eq!(merge_series(&[]), None);
    }

    #[test]
    fn the_sparkline_scales_to_its_peak_and_leaves_silent_seconds_blank() {
        let t = sample();
        assert_eq!(sparkline(&t, 10), "▇█ █");
        assert_eq!(sparkline(&Timeline::default(), 10), "");
    }
}
