//! The printable audit: one self-contained HTML file (no script, no external resource) with a
//! print stylesheet that fits A4 and US Letter (no fixed page size; 15 mm margins), a page break
//! before each phase, the rollback and the integrity section, and headers that repeat on every
//! page of a long table.
//!
//! Renders [`super::model::Audit`] only; must not read files or contact services.

use super::model::{Audit, StepReport, StepStatus};
use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The stylesheet, shared with the printable procedure ([`super::procedure`]).
pub const STYLE: &str = r#"
:root { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; font-size: 10pt; color: #111; }
body { max-width: 190mm; margin: 1em auto; }
h1 { font-size: 16pt; margin: 0 0 .3em; }
h2 { font-size: 13pt; border-bottom: 1.5pt solid #111; padding-bottom: 2pt; margin-top: 1.2em; }
h3 { font-size: 11pt; margin: 1em 0 .3em; }
table { border-collapse: collapse; width: 100%; margin: .3em 0 .6em; }
th, td { border: .5pt solid #999; padding: 2pt 4pt; text-align: left; vertical-align: top; }
th { background: #eee; }
thead { display: table-header-group; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 8pt; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: .2em 0; }
td, li { overflow-wrap: anywhere; }
.banner { border: 2pt solid #b00; padding: 4pt 6pt; margin: .5em 0; font-weight: bold; }
.step { border: .75pt solid #555; padding: 4pt 6pt; margin: .6em 0; break-inside: avoid-page; }
.step h3 { margin-top: 0; }
.status-completed, .status-planned { color: #064; }
.status-FAILED { color: #b00; }
.muted { color: #555; }
.sign { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: 6mm; margin-top: 4mm; }
.sign div { border-top: .75pt solid #111; padding-top: 1mm; font-size: 8pt; min-height: 12mm; }
.box { display: inline-block; width: 3.5mm; height: 3.5mm; border: .75pt solid #111; vertical-align: middle; margin-right: 2mm; }
@page { margin: 15mm; }
@media print {
  body { max-width: none; margin: 0; }
  .phase, .pagebreak { break-before: page; }
  a { color: inherit; text-decoration: none; }
}
"#;

/// Opens a document: doctype, title and the stylesheet.
pub fn open(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    )
}

/// A two-column table of (label, value) rows.
pub fn rows_table(rows: &[(String, String)]) -> String {
    let mut out = String::from("<table>\n");
    for (k, v) in rows {
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    out.push_str("</table>\n");
    out
}

/// The run's audit as a printable HTML document.
pub fn render(a: &Audit) -> String {
    let mut out = open(&format!("Cutover audit: run {}", a.run_id));
    let _ = writeln!(out, "<h1>Cutover audit: run {}</h1>", escape(&a.run_id));
    for (label, text) in &a.banners {
        let _ = writeln!(
            out,
            "<p class=\"banner\">{}. {}</p>",
            escape(label),
            escape(text)
        );
    }
    out.push_str(&rows_table(&a.header));
    if let Some(d) = &a.downtime {
        let _ = writeln!(
            out,
            "<p><strong>Measured write outage.</strong> {}</p>",
            escape(d)
        );
    }
    if !a.approvals.is_empty() {
        out.push_str("<h2>Approvals</h2>\n<ul>\n");
        for x in &a.approvals {
            let _ = writeln!(out, "<li>{}</li>", escape(x));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Steps at a glance</h2>\n<table><thead><tr><th>Phase</th><th>Step</th><th>Kind</th><th>Outcome</th><th>Seconds</th></tr></thead><tbody>\n");
    for st in a.steps() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"status-{}\">{}</td><td>{}</td></tr>",
            escape(&st.phase),
            escape(&st.id),
            escape(&st.kind),
            st.status.label(),
            st.status.label(),
            st.duration_ms
                .map(|ms| format!("{:.1}", ms as f64 / 1000.0))
                .unwrap_or_default()
        );
    }
    out.push_str("</tbody></table>\n");

    for (phase, steps) in &a.phases {
        let _ = writeln!(
            out,
            "<section class=\"phase\">\n<h2>Phase {}</h2>",
            escape(phase)
        );
        for st in steps {
            step(&mut out, st);
        }
        out.push_str("</section>\n");
    }

    if let Some((at, failed, reason)) = &a.rollback {
        let _ = writeln!(
            out,
            "<section class=\"pagebreak\">\n<h2>Rollback</h2>\n<p>Started {} because step <code>{}</code> failed: {}</p>",
            escape(at),
            escape(failed),
            escape(reason)
        );
        out.push_str("<table><thead><tr><th>Step</th><th>Object</th><th>Before</th><th>After</th><th>What</th></tr></thead><tbody>\n");
        for st in a.steps() {
            let Some(rb) = &st.rollback else { continue };
            if let Some(e) = &rb.error {
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td colspan=\"4\"><strong>rollback FAILED</strong>: {}<ul>{}</ul></td></tr>",
                    escape(&st.id),
                    escape(e),
                    rb.manual
                        .iter()
                        .map(|m| format!("<li><span class=\"box\"></span>{}</li>", escape(m)))
                        .collect::<String>()
                );
            } else if rb.restored.is_empty() {
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td colspan=\"4\">nothing to undo</td></tr>",
                    escape(&st.id)
                );
            }
            for x in &rb.restored {
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                    escape(&st.id),
                    escape(&x.object),
                    escape(&x.before),
                    escape(&x.after),
                    escape(&x.detail)
                );
            }
        }
        out.push_str("</tbody></table>\n</section>\n");
    }

    out.push_str("<section class=\"pagebreak\">\n<h2>Timeline</h2>\n<table><thead><tr><th>Time (UTC)</th><th>Step</th><th>Event</th></tr></thead><tbody>\n");
    for (ts, step, text) in &a.timeline {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
            escape(ts),
            escape(step),
            escape(text)
        );
    }
    out.push_str("</tbody></table>\n</section>\n");

    out.push_str("<h2>Integrity</h2>\n");
    let _ = writeln!(
        out,
        "<p>{} records in a SHA-256 hash chain. Chain head:</p>\n<pre class=\"head\">{}</pre>",
        a.records,
        escape(&a.chain_head)
    );
    match &a.signature {
        Some(sig) => {
            let _ = writeln!(
                out,
                "<p>Signed (ed25519) at {} by key <code>{}</code>, covering {} records up to head <code>{}</code>.</p>",
                escape(&sig.signed_at),
                escape(&sig.key_fingerprint),
                sig.records,
                escape(&sig.chain_head)
            );
        }
        None => out.push_str("<p><strong>Unsigned.</strong> Records cut off the end of an unsigned log cannot be detected.</p>\n"),
    }
    let _ = writeln!(
        out,
        "<p>Check offline: <code>cutover audit verify {} --public-key KEY.pub.pem</code></p>",
        escape(&a.run_id)
    );
    out.push_str("<div class=\"sign\"><div>Reviewed by (name, role)</div><div>Signature</div><div>Date</div></div>\n");
    out.push_str("</body>\n</html>\n");
    out
}

fn step(out: &mut String, st: &StepReport) {
    let _ = writeln!(
        out,
        "<div class=\"step\" id=\"step-{}\">\n<h3><code>{}</code> — {} — <span class=\"status-{}\">{}</span></h3>",
        escape(&st.id),
        escape(&st.id),
        escape(&st.kind),
        st.status.label(),
        st.status.label()
    );
    let mut meta = Vec::new();
    if let Some(t) = &st.started {
        meta.push(format!("started {t}"));
    }
    if let Some(t) = &st.finished {
        meta.push(format!("ended {t}"));
    }
    if let Some(ms) = st.duration_ms {
        meta.push(format!("{:.1} s", ms as f64 / 1000.0));
    }
    if !meta.is_empty() {
        let _ = writeln!(out, "<p class=\"muted\">{}</p>", escape(&meta.join(" · ")));
    }
    if !st.summary.is_empty() {
        let label = match st.status {
            StepStatus::Failed => "Error",
            StepStatus::Skipped => "Skipped",
            _ => "Outcome",
        };
        let _ = writeln!(
            out,
            "<p><strong>{label}:</strong> {}</p>",
            escape(&st.summary)
        );
    }
    if st.params.as_object().is_some_and(|o| !o.is_empty()) {
        let _ = writeln!(
            out,
            "<p><strong>Parameters</strong> (secrets as fingerprints):</p><pre>{}</pre>",
            escape(&serde_json::to_string_pretty(&st.params).unwrap_or_default())
        );
    }
    if !st.plan.is_empty() {
        out.push_str("<p><strong>Plan</strong></p><ul>\n");
        for (line, doc) in &st.plan {
            let _ = write!(out, "<li>{}", escape(line));
            if let Some(d) = doc {
                let _ = write!(out, "<pre>{}</pre>", escape(d));
            }
            out.push_str("</li>\n");
        }
        out.push_str("</ul>\n");
    }
    if !st.events.is_empty() {
        out.push_str("<p><strong>During the step</strong></p><ul>\n");
        for (ts, text) in &st.events {
            let _ = writeln!(out, "<li><code>{}</code> {}</li>", escape(ts), escape(text));
        }
        out.push_str("</ul>\n");
    }
    if !st.evidence.is_empty() {
        out.push_str("<p><strong>Evidence</strong></p><table>\n");
        for (k, v) in &st.evidence {
            let _ = writeln!(
                out,
                "<tr><th scope=\"row\">{}</th><td><code>{}</code></td></tr>",
                escape(k),
                escape(v)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
