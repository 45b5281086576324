//! Minimal PNG line plots (axes, ticks, digit labels) drawn with the `image` crate, for the
//! curves the CLI reports (e.g. Grassmannian distance against subspace dimension).

use anyhow::{bail, Context, Result};

/// A named curve with its colour and `(x, y)` points.
pub type Series = (&'static str, [u8; 3], Vec<(f64, f64)>);

/// 3x5 glyphs (rows top to bottom, 3 bits each, high bit left) for tick labels.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        _ => [0; 5],
    }
}

fn put(img: &mut image::RgbImage, x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, image::Rgb(c));
    }
}

fn text(img: &mut image::RgbImage, s: &str, x: i64, y: i64) {
    for (i, ch) in s.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        put(
                            img,
                            x + 8 * i as i64 + 2 * col + dx,
                            y + 2 * row as i64 + dy,
                            [0; 3],
                        );
                    }
                }
            }
        }
    }
}

fn line(img: &mut image::RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for s in 0..=n {
        let t = s as f64 / n as f64;
        let (x, y) = (
            (x0 + t * (x1 - x0)).round() as i64,
            (y0 + t * (y1 - y0)).round() as i64,
        );
        put(img, x, y, c);
        put(img, x, y + 1, c);
    }
}

/// Draws the curves as a 720x440 PNG: axes, x ticks at every k, 5 y ticks with labels.
pub fn draw_plot(series: &[Series], path: &std::path::Path) -> Result<()> {
    let (w, h, left, bottom, top, right) = (720.0, 440.0, 60.0, 40.0, 20.0, 20.0);
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255; 3]));
    let all = series.iter().flat_map(|s| s.2.iter());
    let (x_min, x_max, y_max) = all.fold(
        (f64::INFINITY, f64::NEG_INFINITY, 0.0f64),
        |(a, b, c), &(x, y)| (a.min(x), b.max(x), c.max(y)),
    );
    if !(x_min.is_finite() && x_max.is_finite() && y_max.is_finite()) {
        bail!("nothing to plot");
    }
    let x_span = (x_max - x_min).max(1.0);
    let y_top = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    let px = |x: f64| left + (x - x_min) / x_span * (w - left - right);
    let py = |y: f64| h - bottom - y / y_top * (h - bottom - top);
    let black = [0; 3];
    line(&mut img, (left, top), (left, h - bottom), black);
    line(&mut img, (left, h - bottom), (w - right, h - bottom), black);
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        line(
            &mut img,
            (px(x), h - bottom),
            (px(x), h - bottom + 6.0),
            black,
        );
        let label = format!("{x}");
        text(
            &mut img,
            &label,
            px(x) as i64 - 4 * label.len() as i64,
            (h - bottom + 10.0) as i64,
        );
    }
    for i in 0..=5 {
        let y = y_top * i as f64 / 5.0;
        line(&mut img, (left - 6.0, py(y)), (left, py(y)), black);
        text(&mut img, &format!("{y:.2}"), 4, py(y) as i64 - 5);
    }
    for (_, colour, pts) in series {
        for pair in pts.windows(2) {
            line(
                &mut img,
                (px(pair[0].0), py(pair[0].1)),
                (px(pair[1].0), py(pair[1].1)),
                *colour,
            );
        }
        for &(x, y) in pts {
            for d in -2..=2 {
                line(
                    &mut img,
                    (px(x) - 2.0, py(y) + f64::from(d)),
                    (px(x) + 2.0, py(y) + f64::from(d)),
                    *colour,
                );
            }
        }
    }
    crate::grid::save_png(&img, path).with_context(|| format!("cannot write {}", path.display()))
}
