//! The Overview's chart, drawn on the server: one stacked bar per minute, one colour per outcome.
//! Only geometry is computed here; the template writes the SVG.

use super::overview::Minute;

pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// The colour of each status (colour-blind-friendly palette).
pub fn colour(status: &str) -> &'static str {
    match status {
        "succeeded" => "#1b9e77",
        "no_user" => "#7570b3",
        "contact_not_found" => "#e6ab02",
        "rejected" => "#d95f02",
        "retrying" => "#66a61e",
        "processing" => "#a6cee3",
        "dead" => "#e7298a",
        _ => "#999999",
    }
}

pub struct Rect {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub fill: &'static str,
    /// Tooltip: "08:20 UTC: 3 succeeded".
    pub title: String,
}

pub struct Legend {
    pub status: String,
    pub fill: &'static str,
    pub total: i64,
}

pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub rects: Vec<Rect>,
    /// The largest minute's total (the top of the scale).
    pub max: i64,
    pub legend: Vec<Legend>,
    pub axis_y: String,
    pub axis_x0: String,
    pub axis_x1: String,
    pub label_y: String,
    /// Time labels under the axis: (x, text, text-anchor).
    pub ticks: Vec<(String, String, &'static str)>,
}

fn n(v: f64) -> String {
    format!("{v:.1}")
}

pub fn build(statuses: &[String], minutes: &[Minute]) -> Chart {
    let max = minutes
        .iter()
        .map(|m| m.counts.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / minutes.len().max(1) as f64;
    let bar = (slot - 1.0).max(1.0);
    let mut rects = Vec::new();
    for (i, m) in minutes.iter().enumerate() {
        let x = LEFT + i as f64 * slot;
        let mut y = TOP + plot_h;
        for (status, count) in statuses.iter().zip(&m.counts) {
            if *count == 0 {
                continue;
            }
            let h = plot_h * *count as f64 / max as f64;
            y -= h;
            rects.push(Rect {
                x: n(x),
                y: n(y),
                w: n(bar),
                h: n(h),
                fill: colour(status),
                title: format!("{} UTC: {count} {status}", m.minute.format("%H:%M")),
            });
        }
    }
    let legend = statuses
        .iter()
        .enumerate()
        .map(|(i, s)| Legend {
            status: s.clone(),
            fill: colour(s),
            total: minutes.iter().map(|m| m.counts.get(i).copied().unwrap_or(0)).sum(),
        })
        .collect();
    let mut ticks = Vec::new();
    let last = minutes.len().saturating_sub(1);
    for (i, anchor) in [(0, "start"), (minutes.len() / 2, "middle"), (last, "end")] {
        if let Some(m) = minutes.get(i) {
            let x = match anchor {
                "end" => LEFT + (i + 1) as f64 * slot,
                _ => LEFT + i as f64 * slot,
            };
            ticks.push((n(x), m.minute.format("%H:%M").to_string(), anchor));
        }
    }
    Chart {
        width: WIDTH,
        height: HEIGHT,
        rects,
        max,
        legend,
        axis_y: n(TOP + plot_h),
        axis_x0: n(LEFT),
        axis_x1: n(WIDTH - RIGHT),
        label_y: n(HEIGHT - 6.0),
        ticks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn bars_stack_to_scale() {
        let statuses = vec!["succeeded".to_string(), "dead".to_string()];
        let minutes = vec![
            Minute {
                minute: Utc::now(),
                counts: vec![3, 1],
            },
            Minute {
                minute: Utc::now(),
                counts: vec![0, 0],
            },
        ];
        let c = build(&statuses, &minutes);
        assert_eq!(c.max, 4);
        assert_eq!(c.rects.len(), 2, "empty counts draw nothing");
        let h: f64 = c.rects.iter().map(|r| r.h.parse::<f64>().unwrap()).sum();
        assert!(
            (h - (HEIGHT - TOP - BOTTOM)).abs() < 0.2,
            "the fullest minute fills the plot"
        );
        assert_eq!(c.legend[0].total, 3);
        assert!(c.rects[0].title.ends_with("3 succeeded"));
    }
}
