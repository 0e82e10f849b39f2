//! A hand-written SVG chart (no plotting dependency): one panel of horizontal bars per case,
//! plus isolation latency and idle-connection memory.

use std::fmt::Write as _;

use crate::report::{dur, thousands};
use crate::runner::{Case, Kind, Results};

const W: f64 = 1100.0;
const PANEL_W: f64 = 530.0;
const LABEL_W: f64 = 120.0;
const BAR_H: f64 = 16.0;
const ROW_H: f64 = 21.0;
const TITLE_H: f64 = 34.0;

struct Bar {
    label: String,
    value: f64,
    text: String,
    color: &'static str,
}

fn color(kind: Kind) -> &'static str {
    match kind {
        Kind::Async => "#9aa5b1",
        Kind::Blocking => "#d9a35b",
        Kind::Amphi => "#2563eb",
        Kind::Python => "#4d9e5a",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn panel(out: &mut String, x: f64, y: f64, title: &str, bars: &[Bar]) -> f64 {
    let _ = writeln!(
        out,
        r#"<text x="{x}" y="{}" class="t">{}</text>"#,
        y + 18.0,
        esc(title)
    );
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9);
    let span = PANEL_W - LABEL_W - 110.0;
    for (i, b) in bars.iter().enumerate() {
        let by = y + TITLE_H + i as f64 * ROW_H;
        let len = (b.value / max * span).max(1.0);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" class="l" text-anchor="end">{}</text>"#,
            x + LABEL_W - 6.0,
            by + 12.5,
            esc(&b.label)
        );
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{by}" width="{len:.1}" height="{BAR_H}" fill="{}"/>"#,
            x + LABEL_W,
            b.color
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" class="v">{}</text>"#,
            x + LABEL_W + len + 5.0,
            by + 12.5,
            esc(&b.text)
        );
    }
    TITLE_H + bars.len() as f64 * ROW_H + 16.0
}

pub fn render(r: &Results) -> String {
    let mut panels: Vec<(String, Vec<Bar>)> = Vec::new();
    for case in Case::ALL {
        let floor = r
            .cell(case, case.floor())
            .and_then(Result::ok)
            .map(|x| x.rps);
        let bars: Vec<Bar> = r
            .targets
            .iter()
            .filter_map(|(name, _, kind)| {
                let res = r.cell(case, name)?.ok()?;
                let ratio = floor.map_or(String::new(), |f| format!("  ({:.2}×)", res.rps / f));
                Some(Bar {
                    label: name.clone(),
                    value: res.rps,
                    text: format!("{}{ratio}", thousands(res.rps)),
                    color: color(*kind),
                })
            })
            .collect();
        if !bars.is_empty() {
            let title = if case.is_ws() {
                format!("{}: round trips/s (× axum)", case.short())
            } else {
                format!("{}: requests/s (× raw hyper)", case.short())
            };
            panels.push((title, bars));
        }
    }
    if let Some(Ok(iso)) = &r.isolation {
        let c = color(Kind::Amphi);
        let bars = vec![
            Bar {
                label: "p50 unloaded".into(),
                value: iso.unloaded.p50_us,
                text: dur(iso.unloaded.p50_us),
                color: "#93b4f5",
            },
            Bar {
                label: "p50 saturated".into(),
                value: iso.loaded.p50_us,
                text: dur(iso.loaded.p50_us),
                color: "#93b4f5",
            },
            Bar {
                label: "p99 unloaded".into(),
                value: iso.unloaded.p99_us,
                text: dur(iso.unloaded.p99_us),
                color: c,
            },
            Bar {
                label: "p99 saturated".into(),
                value: iso.loaded.p99_us,
                text: dur(iso.loaded.p99_us),
                color: c,
            },
        ];
        panels.push((
            "isolation: amphi /async/hello latency, blocking pool idle vs saturated".into(),
            bars,
        ));
    }
    let mem: Vec<Bar> = r
        .memory
        .iter()
        .filter_map(|(name, m)| {
            let m = m.as_ref().ok()?;
            let kind = r
                .targets
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or(Kind::Async, |t| t.2);
            Some(Bar {
                label: name.clone(),
                value: m.rss_after_kib as f64,
                text: format!("{:.1} MiB", m.rss_after_kib as f64 / 1024.0),
                color: color(kind),
            })
        })
        .collect();
    if !mem.is_empty() {
        let n = r
            .memory
            .iter()
            .find_map(|(_, m)| m.as_ref().ok().map(|m| m.wanted))
            .unwrap_or(0);
        panels.push((
            format!(
                "RSS holding {} idle keep-alive connections",
                thousands(n as f64)
            ),
            mem,
        ));
    }
    let ws_mem: Vec<Bar> = r
        .ws_memory
        .iter()
        .filter_map(|(name, m)| {
            let m = m.as_ref().ok()?;
            let kind = r
                .targets
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or(Kind::Async, |t| t.2);
            Some(Bar {
                label: name.clone(),
                value: m.bytes_per_socket(),
                text: format!("{:.1} KiB", m.bytes_per_socket() / 1024.0),
                color: color(kind),
            })
        })
        .collect();
    if !ws_mem.is_empty() {
        panels.push((
            "RSS per idle websocket (lower is better)".to_owned(),
            ws_mem,
        ));
    }

    let mut body = String::new();
    let mut y = 56.0;
    for pair in panels.chunks(2) {
        let mut h: f64 = 0.0;
        for (i, (title, bars)) in pair.iter().enumerate() {
            h = h.max(panel(
                &mut body,
                20.0 + i as f64 * (PANEL_W + 20.0),
                y,
                title,
                bars,
            ));
        }
        y += h;
    }
    let legend_y = y + 4.0;
    let mut legend = String::new();
    for (i, (label, kind)) in [
        ("async peer", Kind::Async),
        ("blocking peer", Kind::Blocking),
        ("amphi", Kind::Amphi),
        ("Python (Django)", Kind::Python),
    ]
    .iter()
    .enumerate()
    {
        let lx = 20.0 + i as f64 * 170.0;
        let _ = writeln!(
            legend,
            r#"<rect x="{lx}" y="{legend_y}" width="14" height="14" fill="{}"/><text x="{}" y="{}" class="l">{label}</text>"#,
            color(*kind),
            lx + 20.0,
            legend_y + 11.5
        );
    }
    let height = legend_y + 30.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<style>.h{{font-size:18px;font-weight:bold}} .t{{font-size:13px;font-weight:bold}} .l{{font-size:12px}} .v{{font-size:11px;fill:#333}}</style>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="30" class="h">amphi side by side: one run, loopback, same machine (bars: higher is better for requests/s)</text>
{body}{legend}</svg>
"#
    )
}
