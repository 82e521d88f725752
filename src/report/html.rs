//! The printable audit: one self-contained HTML file (no script, no external resource) with a
//! print stylesheet that fits A4 and US Letter (no fixed page size; 15 mm margins), a page break
//! before each phase, the rollback and the integrity section, and headers that repeat on every
//! page of a long table.
//!
//! The layout is the template `src/report/templates/audit.html` (minijinja, auto-escaped), which
//! a team may replace with `--template DIR`; this module gives it the [`super::model::Audit`],
//! the stylesheet and the timeline picture. Must not contact services; reads only the template
//! directory it is given.

use super::model::Audit;
use super::templates::TemplateError;
use std::path::Path;

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
figure.picture { margin: .4em 0 .8em; break-inside: avoid-page; }
figure.picture svg { display: block; }
@media print { svg * { print-color-adjust: exact; -webkit-print-color-adjust: exact; } }
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

/// The run's audit as a printable HTML document, from `audit.html` in `template_dir` when it
/// holds one, else the built-in template (`src/report/templates/audit.html`).
///
/// # Errors
/// [`TemplateError`] when the team's template cannot be read or fails.
pub fn render(a: &Audit, template_dir: Option<&Path>) -> Result<String, TemplateError> {
    let picture = if a.picture.bars.is_empty() {
        String::new()
    } else {
        super::timeline::svg(&a.picture)
    };
    let ctx = minijinja::context! {
        audit => minijinja::Value::from(minijinja::value::Serde(a)),
        style => minijinja::Value::from_safe_string(STYLE.to_string()),
        picture => minijinja::Value::from_safe_string(picture),
    };
    super::templates::render("audit.html", template_dir, ctx)
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
