//! Input rules for every field a client sends. Each returns a
//! `validation_error` whose message names the field and the rule.

use crate::error::Error;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_CONTENT_CHARS: usize = 10_000;
pub const MAX_USER_ID_CHARS: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A user id: 1-128 characters of `[A-Za-z0-9._@-]`.
pub fn user_id(value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= MAX_USER_ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "user id must be 1-{MAX_USER_ID_CHARS} characters of A-Z a-z 0-9 . _ @ -"
        )))
    }
}

/// A title: 1-200 characters once trimmed, no control characters. Returns it trimmed.
pub fn title(value: &str) -> Result<String, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Error::Validation("title must not be empty".into()));
    }
    if trimmed.chars().count() > MAX_TITLE_CHARS {
        return Err(Error::Validation(format!(
            "title must be at most {MAX_TITLE_CHARS} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Error::Validation(
            "title must not contain control characters".into(),
        ));
    }
    Ok(trimmed.to_owned())
}

/// Segment content: 1-10,000 characters, kept exactly as sent.
pub fn content(value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::Validation("content must not be empty".into()));
    }
    if value.chars().count() > MAX_CONTENT_CHARS {
        return Err(Error::Validation(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        )));
    }
    Ok(())
}

/// An idempotency key: 1-128 printable ASCII characters without spaces.
pub fn idempotency_key(value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_CHARS
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters without spaces"
        )))
    }
}

/// Resolves the key given in the body and the `Idempotency-Key` header: either
/// may be used, both must agree.
pub fn pick_idempotency_key(
    body: Option<String>,
    header: Option<String>,
) -> Result<Option<String>, Error> {
    let key = match (body, header) {
        (Some(b), Some(h)) if b != h => {
            return Err(Error::Validation(
                "idempotency_key in the body and the Idempotency-Key header differ".into(),
            ))
        }
        (Some(k), _) | (None, Some(k)) => Some(k),
        (None, None) => None,
    };
    if let Some(k) = &key {
        idempotency_key(k)?;
    }
    Ok(key)
}

/// A page request: `after` an exclusive seq, `limit` 1-1000 (default 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub after: u64,
    pub limit: u32,
}

impl Page {
    pub fn new(after: Option<u64>, limit: Option<u32>) -> Result<Self, Error> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if limit == 0 || limit > MAX_PAGE_LIMIT {
            return Err(Error::Validation(format!(
                "limit must be between 1 and {MAX_PAGE_LIMIT}"
            )));
        }
        Ok(Page {
            after: after.unwrap_or(0),
            limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_alphabet() {
        assert!(user_id("alice@example.com").is_ok());
        assert!(user_id("a.b_c-d").is_ok());
        assert!(user_id("").is_err());
        assert!(user_id("has space").is_err());
        assert!(user_id("émile").is_err());
        assert!(user_id(&"x".repeat(129)).is_err());
        assert!(user_id(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(title("  Plan  ").unwrap(), "Plan");
        assert!(title("   ").is_err());
        assert!(title(&"é".repeat(200)).is_ok());
        assert!(title(&"é".repeat(201)).is_err());
        assert!(title("a\u{0}b").is_err());
    }

    #[test]
    fn content_is_bounded_in_characters() {
        assert!(content("").is_err());
        assert!(content(&"ü".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert!(content(&"ü".repeat(MAX_CONTENT_CHARS + 1)).is_err());
    }

    #[test]
    fn idempotency_keys_from_body_and_header_must_agree() {
        assert_eq!(
            pick_idempotency_key(Some("k1".into()), None).unwrap(),
            Some("k1".into())
        );
        assert_eq!(
            pick_idempotency_key(None, Some("k2".into())).unwrap(),
            Some("k2".into())
        );
        assert!(pick_idempotency_key(Some("a".into()), Some("b".into())).is_err());
        assert!(pick_idempotency_key(Some("has space".into()), None).is_err());
        assert_eq!(pick_idempotency_key(None, None).unwrap(), None);
    }

    #[test]
    fn pages_default_and_bound_their_limit() {
        assert_eq!(
            Page::new(None, None).unwrap(),
            Page {
                after: 0,
                limit: 100
            }
        );
        assert!(Page::new(Some(3), Some(1000)).is_ok());
        assert!(Page::new(None, Some(0)).is_err());
        assert!(Page::new(None, Some(1001)).is_err());
    }
}
