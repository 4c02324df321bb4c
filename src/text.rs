//! Text helpers shared by every layer.

/// The first `max` characters of `text` (whole characters, never a split
/// UTF-8 sequence).
pub fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_character_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("", 0), "");
    }
}
