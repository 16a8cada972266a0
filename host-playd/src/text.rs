//! Guest text made safe for a log line or a host property.
//!
//! A guest chooses its stream name and its goodbye reasons. Printed raw,
//! a U+2028 forges a new log line in viewers that honour it, a bidi override
//! makes a mixer entry read as something else, and zero-width characters
//! make two different names look alike. Every such character is replaced by
//! [`REPLACEMENT`] before the text goes anywhere.
#![forbid(unsafe_code)]

/// What a dangerous character becomes: plain ASCII, visible everywhere.
pub const REPLACEMENT: char = '?';

/// Whether `c` must not reach a log or a host property as it is: control
/// characters (C0, DEL, C1), the Unicode line and paragraph separators,
/// bidi embeddings, overrides, isolates and marks, and zero-width or
/// invisible formatting characters.
pub fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}'            // line / paragraph separator
            | '\u{061C}'                       // arabic letter mark
            | '\u{200B}'..='\u{200F}'          // zero-width space..RLM
            | '\u{202A}'..='\u{202E}'          // bidi embeddings, overrides
            | '\u{2060}'..='\u{2064}'          // word joiner, invisible operators
            | '\u{2066}'..='\u{206F}'          // bidi isolates, deprecated formats
            | '\u{FEFF}'                       // BOM / zero-width no-break space
            | '\u{180E}'                       // mongolian vowel separator
            | '\u{00AD}'                       // soft hyphen
            | '\u{FFF9}'..='\u{FFFB}'          // interlinear annotation
        )
}

/// `text` with every [`is_hostile`] character replaced, cut at a character
/// boundary to at most `max_bytes` bytes.
pub fn sanitize(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars() {
        let c = if is_hostile(c) { REPLACEMENT } else { c };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_characters_are_replaced() {
        let nasty = "a\u{2028}b\u{2029}c\u{202E}d\u{2066}e\u{200B}f\u{FEFF}g\u{2060}h\
                     \u{200E}i\u{200F}j\u{061C}k\u{0007}l\u{009B}m\nn\u{00AD}o";
        let clean = sanitize(nasty, 1000);
        assert_eq!(clean, "a?b?c?d?e?f?g?h?i?j?k?l?m?n?o");
        assert!(clean.chars().all(|c| !is_hostile(c)));
    }

    #[test]
    fn ordinary_text_is_kept_and_cut_on_a_boundary() {
        assert_eq!(sanitize("Musik für VM 3 — ♪", 1000), "Musik für VM 3 — ♪");
        assert_eq!(sanitize("ééé", 5), "éé");
        assert_eq!(sanitize("", 5), "");
    }

    #[test]
    fn every_character_is_either_kept_or_replaced() {
        for c in (0u32..0x3_0000).filter_map(char::from_u32) {
            let s = sanitize(&c.to_string(), 8);
            let expected = if is_hostile(c) { REPLACEMENT } else { c };
            assert_eq!(s, expected.to_string(), "U+{:04X}", c as u32);
        }
    }
}
