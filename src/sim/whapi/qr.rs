//! QR strings and PNG rendering for `GET /users/login*`.

use base64::Engine;
use qrcode::{Color, QrCode};
use sha2::{Digest, Sha256};

fn b64_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The QR payload of QR number `index` in the series started at `base_ms`: deterministic,
/// so the same QR is served until it expires. Shaped like WhatsApp Web's
/// `2@ref,noise,identity,adv` string.
pub(crate) fn rowdata(channel_id: &str, token: &str, base_ms: i64, index: i64) -> String {
    let seed = format!("{channel_id}:{token}:{base_ms}:{index}");
    format!(
        "2@{},{},{},{}",
        b64_hash(&[&seed, "ref"]),
        b64_hash(&[&seed, "noise"]),
        b64_hash(&[&seed, "identity"]),
        b64_hash(&[&seed, "adv"])
    )
}

/// Renders `data` as a grayscale PNG (8 px per module, 4-module quiet zone).
pub(crate) fn png(data: &str) -> Result<Vec<u8>, String> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code = QrCode::new(data.as_bytes()).map_err(|e| e.to_string())?;
    let w = code.width();
    let colors = code.to_colors();
    let side = (w + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c != Color::Dark {
            continue;
        }
        let (mx, my) = (i % w + QUIET, i / w + QUIET);
        for y in my * SCALE..(my + 1) * SCALE {
            let row = y * side;
            pixels[row + mx * SCALE..row + (mx + 1) * SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    {
        let side = u32::try_from(side).map_err(|e| e.to_string())?;
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
