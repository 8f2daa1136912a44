//! Links as QR codes in the terminal.

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

/// The link as a QR code drawn with Unicode half blocks (light on dark terminals and dark on
/// light ones both scan, thanks to the quiet zone).
pub(crate) fn render(link: &str) -> anyhow::Result<String> {
    let code = QrCode::new(link.as_bytes())
        .map_err(|e| anyhow::anyhow!("the link does not fit in a QR code: {e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The link as a QR code in SVG (for a web page or an app): black modules on white with the
/// quiet zone, at least 200 pixels wide.
pub(crate) fn svg(link: &str) -> anyhow::Result<String> {
    let code = QrCode::new(link.as_bytes())
        .map_err(|e| anyhow::anyhow!("the link does not fit in a QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}
